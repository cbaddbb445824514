#!/usr/bin/env bash
# The King James Bible from Debian's bible-kjv-text, one file per book, the held-out books in
# val/ and the rest in train/ (under the folder given, default build/kjv-data).
set -euo pipefail
out="${1:-build/kjv-data}"
held_out=("Ruth" "Esther" "Jonah" "Philippians" "James" "1 John")
if ! command -v bible >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bible-kjv bible-kjv-text
fi
rm -rf "$out" && mkdir -p "$out/all" "$out/train" "$out/val"
# Chapter headers ("1 Samuel 3") start at column 0, verses are indented: a new book starts
# where the header's name changes.
bible -l100000 "Gen1:1-Rev22:21" | awk -v dir="$out/all" '
  /^[^ ].* [0-9]+$/ {
    book = $0; sub(/ [0-9]+$/, "", book)
    if (book != current) { current = book; n++; file = sprintf("%s/%02d %s.txt", dir, n, book) }
  }
  file != "" { print > file }'
for f in "$out"/all/*.txt; do
  name="$(basename "$f" .txt)"; book="${name#* }"; dest=train
  for h in "${held_out[@]}"; do [ "$book" = "$h" ] && dest=val; done
  mv "$f" "$out/$dest/"
done
rmdir "$out/all"
echo "$(ls "$out/train" | wc -l) training books, $(ls "$out/val" | wc -l) held out: $(cat "$out"/val/*.txt | wc -c) of $(cat "$out"/*/*.txt | wc -c) bytes"
