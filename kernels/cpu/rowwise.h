// kernels/cpu/rowwise.h — the CPU side of the row-wise kernels (the table,
// shared with the GPU: kernels/rowwise.h) and of adamw_step. Rows are split
// across the OpenMP pool; each row is reduced by one thread in a fixed order,
// so the result does not depend on the thread count.
#pragma once
#include "kernels/rowwise.h"
