#!/usr/bin/env bash
# g++ under amalloc: cc1plus is allocation heavy. The object file must be
# byte-identical to one compiled under the system malloc, and the program,
# run under amalloc too, must print the expected result.
source "$(dirname "$0")/common.sh"
need g++ cmp

cat >"$WORK/prog.cpp" <<'CPP'
#include <cstdio>
#include <map>
#include <string>
#include <vector>
int main() {
  std::map<std::string, std::vector<int>> m;
  for (int i = 0; i < 200000; ++i) m["key" + std::to_string(i % 5000)].push_back(i);
  long long sum = 0;
  std::size_t longest = 0;
  for (auto& [k, v] : m) {
    for (int x : v) sum += x;
    longest = std::max(longest, k.size());
  }
  std::vector<std::string> words;
  for (int i = 0; i < 100000; ++i) words.emplace_back(std::string(i % 64, 'a' + i % 26));
  std::size_t chars = 0;
  for (auto& w : words) chars += w.size();
  std::printf("keys=%zu sum=%lld longest=%zu chars=%zu\n", m.size(), sum, longest, chars);
}
CPP
expected='keys=5000 sum=19999900000 longest=7 chars=3149488'

# -frandom-seed: nothing in the object may depend on chance.
flags=(-std=c++17 -O2 -frandom-seed=amalloc)
g++ "${flags[@]}" -c "$WORK/prog.cpp" -o "$WORK/ref.o" || fail "reference compile failed"
am g++ "${flags[@]}" -c "$WORK/prog.cpp" -o "$WORK/am.o" || fail "g++ -c under amalloc"
cmp "$WORK/ref.o" "$WORK/am.o" || fail "object file differs from the system-malloc compile"
am g++ "$WORK/am.o" -o "$WORK/prog" || fail "link under amalloc"
out=$(am "$WORK/prog") || fail "program under amalloc exited with $?"
echo "$out"
[[ $out == "$expected" ]] || fail "program printed '$out', expected '$expected'"
check_amalloc_used 3
echo PASS
