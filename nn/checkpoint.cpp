#include "nn/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/dist.h"

namespace vm::nn {

const Tensor* SafeTensors::find(const std::string& name) const {
  for (auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

void atomic_write(const std::string& path, const std::string& bytes) {
  // A multi-process run writes from rank 0 only (docs/SCALE.md); the callers
  // agree on the outcome through dist::on_root where later work depends on it.
  if (!dist::root()) return;
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail(path + ": cannot write (" + std::strerror(errno) + ")");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(path + ": write failed (" + std::strerror(e) + "); the previous file is untouched");
    }
    done += (size_t)w;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail(path + ": write failed (" + std::strerror(e) + "); the previous file is untouched");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail(path + ": cannot rename into place (" + std::strerror(e) + ")");
  }
  // Make the rename itself durable (a power cut must not resurrect the old file).
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

// CRC-32 (zlib) of the data section, stored as metadata so that a bit flip in
// the tensor bytes is detected on load (the JSON header is checked by parsing).
static const char* kCrcKey = "vmoer_data_crc32";
static std::string crc_hex(unsigned long crc) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08lx", crc & 0xffffffffUL);
  return buf;
}

void save_safetensors(const std::string& path, const SafeTensors& st_any_device) {
  SafeTensors st = st_any_device;  // shallow copies; device tensors are brought to the host
  for (auto& [name, t] : st.tensors) t = t.to(Device::CPU);
  nlohmann::json header = nlohmann::json::object();
  std::map<std::string, std::string> meta = st.metadata;
  uLong crc = crc32_z(0L, Z_NULL, 0);
  for (auto& [name, t] : st.tensors)
    crc = crc32_z(crc, reinterpret_cast<const Bytef*>(t.data()), sizeof(float) * (size_t)t.numel());
  meta[kCrcKey] = crc_hex(crc);
  header["__metadata__"] = meta;
  size_t off = 0;
  for (auto& [name, t] : st.tensors) {
    size_t n = sizeof(float) * (size_t)t.numel();
    header[name] = {{"dtype", "F32"}, {"shape", t.shape()}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h.push_back(' ');  // align the data section to 8 bytes
  std::string bytes;
  bytes.reserve(8 + h.size() + off);
  uint64_t hl = h.size();
  for (int i = 0; i < 8; ++i) bytes.push_back((char)((hl >> (8 * i)) & 0xff));
  bytes += h;
  for (auto& [name, t] : st.tensors)
    bytes.append(reinterpret_cast<const char*>(t.data()), sizeof(float) * (size_t)t.numel());
  atomic_write(path, bytes);
}

SafeTensors load_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open checkpoint");
  std::stringstream ss;
  ss << f.rdbuf();
  std::string bytes = ss.str();
  if (bytes.size() < 8) fail(path + ": truncated safetensors file (" + std::to_string(bytes.size()) + " bytes)");
  uint64_t hl = 0;
  for (int i = 0; i < 8; ++i) hl |= (uint64_t)(unsigned char)bytes[i] << (8 * i);
  if (hl > bytes.size() - 8) fail(path + ": header length " + std::to_string(hl) + " exceeds file size");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.substr(8, hl));
  } catch (const std::exception& e) {
    fail(path + ": corrupt safetensors header (" + e.what() + ")");
  }
  if (!header.is_object()) fail(path + ": corrupt safetensors header (not an object)");
  size_t data0 = 8 + hl, data_size = bytes.size() - data0;
  SafeTensors st;
  std::vector<std::pair<size_t, std::pair<std::string, Tensor>>> items;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) fail(path + ": __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) fail(path + ": metadata '" + m.key() + "' is not a string");
        st.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const auto& e = it.value();
    try {
      if (!e.is_object()) fail(path + ": tensor '" + it.key() + "': malformed entry (not an object)");
      std::string dtype = e.at("dtype").get<std::string>();
      if (dtype != "F32") fail(path + ": tensor '" + it.key() + "' has dtype " + dtype + " (only F32 is supported)");
      // Integers only: nlohmann would silently truncate 2.5 and convert 1e30 with UB.
      const auto& js = e.at("shape");
      const auto& jo = e.at("data_offsets");
      if (!js.is_array() || !jo.is_array() || jo.size() != 2)
        fail(path + ": tensor '" + it.key() + "': malformed entry (shape and data_offsets must be arrays)");
      for (const auto& v : js)
        if (!v.is_number_integer()) fail(path + ": tensor '" + it.key() + "': shape holds a non-integer");
      for (const auto& v : jo)
        if (!v.is_number_unsigned()) fail(path + ": tensor '" + it.key() + "': data_offsets holds a non-integer or negative value");
      Shape shape = js.get<Shape>();
      auto offs = jo.get<std::vector<uint64_t>>();
      if (offs[0] > offs[1] || offs[1] > data_size)
        fail(path + ": tensor '" + it.key() + "' lies outside the file (truncated?)");
      if (shape.size() > 4) fail(path + ": tensor '" + it.key() + "' has more than 4 dimensions");
      for (auto d : shape)
        if (d < 0) fail(path + ": tensor '" + it.key() + "' has a negative dimension");
      // Element count without overflow: stop as soon as it exceeds what the byte range holds.
      uint64_t numel = 1, cap = (offs[1] - offs[0]) / sizeof(float);
      bool fits = true;
      for (auto d : shape) {
        if (d == 0) {
          numel = 0;
          fits = true;
          break;
        }
        if (numel > cap / (uint64_t)d) fits = false;
        else numel *= (uint64_t)d;
      }
      if (!fits || (offs[1] - offs[0]) != sizeof(float) * numel)
        fail(path + ": tensor '" + it.key() + "' byte size does not match its shape " + shape_str(shape));
      Tensor t(shape);
      if (offs[1] > offs[0]) std::memcpy(t.data(), bytes.data() + data0 + offs[0], offs[1] - offs[0]);
      items.push_back({offs[0], {it.key(), std::move(t)}});
    } catch (const nlohmann::json::exception& ex) {
      fail(path + ": tensor '" + it.key() + "': malformed entry (" + ex.what() + ")");
    }
  }
  auto crc_it = st.metadata.find(kCrcKey);
  if (crc_it != st.metadata.end()) {
    std::string got = crc_hex(crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data() + data0), data_size));
    if (got != crc_it->second)
      fail(path + ": data checksum mismatch (crc32 " + got + ", header says " + crc_it->second +
           "): the file is corrupt");
  }
  std::sort(items.begin(), items.end(), [](auto& a, auto& b) { return a.first < b.first; });
  for (auto& it : items) st.tensors.push_back(std::move(it.second));
  return st;
}

}  // namespace vm::nn
