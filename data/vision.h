// data/vision.h — image data sets: Fashion-MNIST (gzipped IDX files, Debian
// dataset-fashion-mnist) as the in-distribution set, and OpenCV's digits.png
// (Debian opencv-doc) as the OOD set. Pixels are float in [0,1], white on
// black for both, row-major, image i at pixels[i*h*w].
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vm::data {

struct ImageSet {
  std::vector<float> pixels;    // n*h*w, in [0,1]
  std::vector<int32_t> labels;  // n
  int n = 0, h = 0, w = 0;
  const float* image(int i) const { return pixels.data() + (size_t)i * h * w; }
};

// A gzipped IDX file of unsigned bytes (magic 0x0000 08 <ndim>): its dims and
// data. Wrong magic, a dim of 0, or a size that does not match the dims
// (truncated or trailing bytes) fails naming the file.
struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};
IdxArray read_idx_gz(const std::string& path);

// Images (ndim 3: n, h, w) + labels (ndim 1: n), checked to agree.
ImageSet load_idx_pair(const std::string& images_gz, const std::string& labels_gz);
// <cache_dir>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
ImageSet load_fashion_mnist(const std::string& cache_dir, bool train);

// An 8-bit PNG read as grey levels (libpng simplified API): h*w bytes.
std::vector<uint8_t> read_png_gray(const std::string& path, int& h, int& w);

// digits.png layout: 20x20 cells; the rows of cells form 10 equal blocks, one
// per digit 0..9 (real file: 2000x1000, 50 rows x 100 cols, 5 rows per digit,
// 500 per digit). Cells in row-major order; each padded by `pad` zero pixels
// on every side (pad 4: 28x28, matching Fashion-MNIST).
ImageSet load_digits_png(const std::string& path, int pad = 4);
// <cache_dir>/digits/digits.png
ImageSet load_digits(const std::string& cache_dir, int pad = 4);

}  // namespace vm::data
