"""reference/safetensors_io.py — a small safetensors reader/writer (no dependency
on the `safetensors` package, which Debian does not ship).

Format: 8-byte little-endian header length n, n bytes of JSON header (may be
padded with trailing spaces), then the raw little-endian data. The header maps
tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
relative to the start of the data section) and may hold "__metadata__", a
string -> string map. Our checkpoints store the model config as JSON text in
metadata["model"].

Reads F32, F64, F16, BF16, I64, I32, I16, I8, U8 and BOOL; writes F32 by
default (what vmoer reads) or keeps the dtype of each tensor when asked.
"""
import json
import struct

import numpy as np
import torch

_NP = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}
_CODE = {np.dtype(v): k for k, v in _NP.items()}


def load(path, as_torch=True):
    """Returns (tensors: dict name -> tensor in file order, metadata: dict str -> str)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: truncated safetensors file ({len(raw)} bytes)")
    (hl,) = struct.unpack("<Q", raw[:8])
    if hl > len(raw) - 8:
        raise ValueError(f"{path}: header length {hl} exceeds file size")
    header = json.loads(raw[8:8 + hl].decode("utf-8").rstrip(" "))
    data = memoryview(raw)[8 + hl:]
    meta = header.pop("__metadata__", None) or {}
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    out = {}
    for name, e in items:
        b, end = e["data_offsets"]
        shape = tuple(int(d) for d in e["shape"])
        if not (0 <= b <= end <= len(data)):
            raise ValueError(f"{path}: tensor '{name}' lies outside the file")
        dt = e["dtype"]
        if dt == "BF16":
            u16 = np.frombuffer(data[b:end], dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32).reshape(shape)
        else:
            if dt not in _NP:
                raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {dt}")
            arr = np.frombuffer(data[b:end], dtype=np.dtype(_NP[dt]).newbyteorder("<")).reshape(shape)
        if arr.size * arr.itemsize != (end - b) and dt != "BF16":
            raise ValueError(f"{path}: tensor '{name}' byte size does not match its shape {shape}")
        arr = np.array(arr)  # own, writable copy
        out[name] = torch.from_numpy(arr) if as_torch else arr
    return out, dict(meta)


def save(path, tensors, metadata=None, dtype="F32"):
    """tensors: dict name -> torch tensor / numpy array. dtype "F32" converts
    every floating tensor to float32 (vmoer's reader accepts only F32);
    dtype=None keeps each tensor's own dtype."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if dtype == "F32":
            a = a.astype(np.float32)
        a = np.ascontiguousarray(a)
        code = _CODE[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
