#include "data/vision.h"

#include <png.h>

#include "core/tensor.h"
#include "data/io.h"

namespace vm::data {

IdxArray read_idx_gz(const std::string& path) {
  std::string raw = read_gzip_file(path);
  if (raw.size() < 4) fail_file(path, "truncated IDX file (" + std::to_string(raw.size()) + " bytes, no header)");
  auto byte = [&](size_t i) { return (uint32_t)(unsigned char)raw[i]; };
  auto be32 = [&](size_t i) { return byte(i) << 24 | byte(i + 1) << 16 | byte(i + 2) << 8 | byte(i + 3); };
  if (byte(0) != 0 || byte(1) != 0 || byte(2) != 0x08)
    fail_file(path, "bad IDX magic (expected 00 00 08 <ndim>: unsigned bytes)");
  uint32_t ndim = byte(3);
  if (ndim < 1 || ndim > 4) fail_file(path, "IDX file has " + std::to_string(ndim) + " dimensions (expected 1..4)");
  size_t header = 4 + 4 * (size_t)ndim;
  if (raw.size() < header) fail_file(path, "truncated IDX header");
  IdxArray a;
  uint64_t count = 1;
  for (uint32_t d = 0; d < ndim; ++d) {
    uint32_t v = be32(4 + 4 * d);
    if (v == 0) fail_file(path, "IDX dimension " + std::to_string(d) + " is 0");
    a.dims.push_back(v);
    count *= v;
  }
  if (raw.size() - header != count)
    fail_file(path, std::string(raw.size() - header < count ? "truncated" : "trailing bytes") +
                        ": the dimensions need " + std::to_string(count) + " data bytes, the file has " +
                        std::to_string(raw.size() - header));
  a.data.assign(raw.begin() + (std::ptrdiff_t)header, raw.end());
  return a;
}

ImageSet load_idx_pair(const std::string& images_gz, const std::string& labels_gz) {
  IdxArray im = read_idx_gz(images_gz);
  IdxArray lb = read_idx_gz(labels_gz);
  if (im.dims.size() != 3) fail_file(images_gz, "expected 3 IDX dimensions (n, h, w)");
  if (lb.dims.size() != 1) fail_file(labels_gz, "expected 1 IDX dimension (n)");
  if (im.dims[0] != lb.dims[0])
    fail_file(labels_gz, std::to_string(lb.dims[0]) + " labels for " + std::to_string(im.dims[0]) + " images in " +
                             images_gz);
  ImageSet s;
  s.n = (int)im.dims[0];
  s.h = (int)im.dims[1];
  s.w = (int)im.dims[2];
  s.pixels.resize(im.data.size());
  for (size_t i = 0; i < im.data.size(); ++i) s.pixels[i] = im.data[i] * (1.0f / 255.0f);
  s.labels.assign(lb.data.begin(), lb.data.end());
  return s;
}

ImageSet load_fashion_mnist(const std::string& cache_dir, bool train) {
  std::string dir = cache_dir + "/fashion-mnist";
  std::string prefix = train ? "train" : "t10k";
  std::string images = require_file(dir, prefix + "-images-idx3-ubyte.gz");
  std::string labels = require_file(dir, prefix + "-labels-idx1-ubyte.gz");
  ImageSet s = load_idx_pair(images, labels);
  for (int32_t l : s.labels)
    if (l > 9) fail_file(dir + "/" + prefix + "-labels-idx1-ubyte.gz", "label " + std::to_string(l) + " outside 0..9");
  return s;
}

std::vector<uint8_t> read_png_gray(const std::string& path, int& h, int& w) {
  std::string bytes = read_file(path);
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, bytes.data(), bytes.size()))
    fail_file(path, std::string("not a readable PNG (") + img.message + ")");
  img.format = PNG_FORMAT_GRAY;
  std::vector<uint8_t> out(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, out.data(), 0, nullptr)) {
    std::string msg = img.message;
    png_image_free(&img);
    fail_file(path, "corrupt or truncated PNG (" + msg + ")");
  }
  h = (int)img.height;
  w = (int)img.width;
  return out;
}

ImageSet load_digits_png(const std::string& path, int pad) {
  constexpr int kCell = 20;
  if (pad < 0) fail("load_digits_png: pad " + std::to_string(pad) + " is negative");
  int H = 0, W = 0;
  std::vector<uint8_t> g = read_png_gray(path, H, W);
  int rows = H / kCell, cols = W / kCell;
  if (H % kCell || W % kCell || rows == 0 || rows % 10)
    fail_file(path, std::to_string(W) + "x" + std::to_string(H) +
                        " image is not a grid of 20x20 cells with a multiple of 10 rows (expected 2000x1000)");
  ImageSet s;
  s.n = rows * cols;
  s.h = s.w = kCell + 2 * pad;
  s.pixels.assign((size_t)s.n * s.h * s.w, 0.0f);
  s.labels.resize(s.n);
  int rows_per_digit = rows / 10;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      int i = r * cols + c;
      s.labels[i] = r / rows_per_digit;
      float* dst = s.pixels.data() + (size_t)i * s.h * s.w;
      for (int y = 0; y < kCell; ++y)
        for (int x = 0; x < kCell; ++x)
          dst[(y + pad) * s.w + (x + pad)] = g[(size_t)(r * kCell + y) * W + c * kCell + x] * (1.0f / 255.0f);
    }
  return s;
}

ImageSet load_digits(const std::string& cache_dir, int pad) {
  return load_digits_png(require_file(cache_dir + "/digits", "digits.png"), pad);
}

}  // namespace vm::data
