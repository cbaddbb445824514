#!/usr/bin/env python3
"""Writes the small torch checkpoints and .npy files that tests/test_io_*.cpp read into tests/fixtures/io/.

Expected values go to expected.json (logical row-major order, as fp32), computed by torch
itself so the C++ reader is checked against an independent implementation. The malicious
pickles are written as raw bytes and never unpickled here.
"""
import collections
import json
import pathlib
import struct
import zipfile

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "io"
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def state_dict():
    big = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    emb = (torch.arange(10, dtype=torch.float32) - 4.5).reshape(5, 2)
    return {
        "f32": torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1,
        "f16": (torch.arange(6, dtype=torch.float32) / 4 - 0.5).to(torch.float16).reshape(2, 3),
        # 1/3 and 0.1 are not representable: torch's rounding is the reference for ours.
        "bf16": (torch.arange(8, dtype=torch.float32) * 0.1 + 1 / 3).to(torch.bfloat16),
        "transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
        "window": big[1:3, 1:4],  # non-contiguous, non-zero storage offset
        "row": big[2],             # contiguous view at an offset into the same storage
        "embedding.weight": emb,   # tied: both names share one storage
        "lm_head.weight": emb,
        "param": torch.nn.Parameter(torch.tensor([1.5, -2.5, 0.0])),
        "scalar": torch.tensor(7.25),
        "empty": torch.zeros(0, 3),
    }


def expected(sd):
    return {
        name: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
               "values": t.detach().float().flatten().tolist()}
        for name, t in sd.items()
    }


def repack(src, dst, compression):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def write_zip64(src, dst):
    """Re-writes a zip with every size/offset in ZIP64 extra fields and an EOCD64 record."""
    out = bytearray()
    central = bytearray()
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        for info in infos:
            name = info.filename.encode()
            data = zin.read(info.filename)
            offset = len(out)
            local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data)) + b"\0" * 7  # odd padding
            out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, info.CRC, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(name), len(local_extra)) + name + local_extra + data
            extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, info.CRC, 0xFFFFFFFF,
                                   0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + name + extra
    cd_off = len(out)
    out += central
    eocd64_off = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(infos), len(infos), len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_off, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    dst.write_bytes(bytes(out))


def write_pickle_zip(dst, pickle_bytes):
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sd = state_dict()
    torch.save(sd, OUT / "state.pt")
    repack(OUT / "state.pt", OUT / "compressed.pt", zipfile.ZIP_DEFLATED)
    write_zip64(OUT / "state.pt", OUT / "zip64.pt")
    torch.save(sd, OUT / "legacy.pt", _use_new_zipfile_serialization=False)

    # A module's state_dict: an OrderedDict carrying _metadata (pickled with BUILD).
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 8)
        lin.bias.copy_(torch.tensor([-1.0, 1.0]))
    module_sd = lin.state_dict()
    torch.save(module_sd, OUT / "module.pt")
    torch.save({"state_dict": module_sd, "epoch": 3, "step": 10**30, "lr": 0.5, "note": "nested"}, OUT / "nested.pt")
    torch.save(collections.OrderedDict(steps=torch.arange(3)), OUT / "int64.pt")

    # os.system("true") via GLOBAL + REDUCE (protocol 2) and builtins.eval via STACK_GLOBAL.
    write_pickle_zip(OUT / "malicious_global.pt",
                     b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    write_pickle_zip(OUT / "malicious_stack_global.pt",
                     b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x041+1\x94\x85\x94R\x94.")

    np.save(OUT / "f8.npy", np.arange(6, dtype="<f8").reshape(2, 3) / 4 - 0.5)
    with open(OUT / "f4_v2.npy", "wb") as f:
        np.lib.format.write_array(f, np.arange(5, dtype="<f4") * 1.5, version=(2, 0))
    np.save(OUT / "fortran.npy", np.asfortranarray(np.ones((2, 3), dtype="<f4")))
    np.save(OUT / "i8.npy", np.arange(3, dtype="<i8"))

    for name in ["state.pt", "zip64.pt"]:
        loaded = torch.load(OUT / name, weights_only=True)
        assert all(torch.equal(loaded[k], v) for k, v in sd.items()), name
    exp = {"state": expected(sd), "module": expected(module_sd)}
    (OUT / "expected.json").write_text(json.dumps(exp, indent=1) + "\n")


if __name__ == "__main__":
    main()
