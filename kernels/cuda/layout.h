// kernels/cuda/layout.h — the GPU side of kernels/layout.h (the table).
// Device pointers, this thread's stream, asynchronous. (TensorT::fill's
// fill_value is part of the CUDA runtime in core/cuda/device.h.)
#pragma once
#include <cstdint>

#include "kernels/layout.h"
