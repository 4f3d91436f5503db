// data/data.h — the whole data layer (namespace vm::data) in one include.
//   io.h        cache location, file reading, error helpers
//   tokenizer.h byte-level tokenizer (vocab 259: bytes + BOS/EOS/PAD)
//   brown.h     Brown corpus sentences       lm.h      LM token streams, batches
//   wordnet.h   WordNet synsets and glosses  dict.h    dictd dictionaries
//   tasks.h     multiple-choice ID task and OOD sets
//   vision.h    Fashion-MNIST (IDX) and OpenCV digits (PNG)
//   shuffle.h   seeded Philox shuffles
// Fetch the real files with `vmoer data fetch` (scripts/fetch_data.sh).
#pragma once
#include "data/brown.h"
#include "data/dict.h"
#include "data/io.h"
#include "data/lm.h"
#include "data/shuffle.h"
#include "data/tasks.h"
#include "data/tokenizer.h"
#include "data/vision.h"
#include "data/wordnet.h"
