#!/usr/bin/env python3
"""Prints the table kTokenizersNfcStarters of src/tokenizer/unicode.cpp.

`tokenizers` normalizes with the unicode-normalization-alignments crate, whose Unicode tables are
old (about Unicode 9): combining marks and compositions added since are unknown to it, so it
leaves such characters where they are, as plain starters. utf8proc (2.8: Unicode 15) knows them
and would reorder or compose them. This script finds every code point that utf8proc gives a
combining class or a canonical decomposition and `tokenizers`' NFC/NFD treats as a plain starter,
plus the parts of compositions `tokenizers` does not know, and prints them as ranges.

    python3 scripts/make_nfc_exceptions.py
"""
import ctypes
import ctypes.util

from tokenizers import normalizers


class Property(ctypes.Structure):
    _fields_ = [("category", ctypes.c_int16), ("combining_class", ctypes.c_int16), ("bidi_class", ctypes.c_int16),
                ("decomp_type", ctypes.c_int16), ("decomp_seqindex", ctypes.c_uint16)]


def main():
    lib = ctypes.CDLL(ctypes.util.find_library("utf8proc"))
    lib.utf8proc_get_property.restype = ctypes.POINTER(Property)
    lib.utf8proc_NFD.restype = ctypes.c_void_p
    lib.utf8proc_version.restype = ctypes.c_char_p
    lib.utf8proc_unicode_version.restype = ctypes.c_char_p

    def utf8proc_nfd(s):
        p = lib.utf8proc_NFD(s.encode())
        out = ctypes.string_at(p).decode()
        ctypes.CDLL(None).free(ctypes.c_void_p(p))
        return out

    nfd = normalizers.NFD()
    starters = set()
    for c in range(0x110000):
        if 0xD800 <= c < 0xE000:
            continue
        prop = lib.utf8proc_get_property(c).contents
        ch = chr(c)
        canonical = prop.decomp_seqindex != 0xFFFF and prop.decomp_type == 0
        if canonical:
            if nfd.normalize_str(ch) == ch:  # a composition tokenizers does not know: keep its parts apart
                starters.add(c)
                starters.update(ord(p) for p in utf8proc_nfd(ch))
        elif prop.combining_class > 1:
            if nfd.normalize_str(ch + "\u0334") != "\u0334" + ch:  # U+0334 has combining class 1
                starters.add(c)
        elif prop.combining_class == 1:
            if nfd.normalize_str("\u0301" + ch) != ch + "\u0301":
                starters.add(c)
    ranges = []
    for c in sorted(starters):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    print(f"// utf8proc {lib.utf8proc_version().decode()} (Unicode {lib.utf8proc_unicode_version().decode()}): "
          f"{len(starters)} code points")
    items = [f"{{0x{a:X}, 0x{b:X}}}" for a, b in ranges]
    for i in range(0, len(items), 6):
        print("    " + ", ".join(items[i:i + 6]) + ",")


if __name__ == "__main__":
    main()
