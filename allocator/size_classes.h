// Size classes: 16-byte steps up to 128 bytes (every block stays 16-byte
// aligned, as glibc guarantees), then 8 classes per power of two up to
// 64 KiB, so that above 128 bytes a block wastes at most 1/9 of itself.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

#include "allocator/config.h"

namespace am {

constexpr unsigned kNumClasses = 8 + 9 * 8;  // 80

constexpr unsigned floor_log2(size_t x) { return 63u - static_cast<unsigned>(__builtin_clzll(x)); }

// Class index of a request of `size` bytes (1 <= size <= kMediumMax; 0 is
// treated as 1).
constexpr unsigned size_to_class(size_t size) {
  if (size <= 128) return size == 0 ? 0 : static_cast<unsigned>((size - 1) >> 4);
  unsigned k = floor_log2(size - 1);  // 2^k < size <= 2^(k+1)
  unsigned j = static_cast<unsigned>((size - 1 - (size_t{1} << k)) >> (k - 3));
  return 8 + (k - 7) * 8 + j;
}

constexpr std::array<uint32_t, kNumClasses> make_class_sizes() {
  std::array<uint32_t, kNumClasses> s{};
  for (unsigned c = 0; c < 8; c++) s[c] = 16 * (c + 1);
  for (unsigned k = 7; k < 16; k++)
    for (unsigned j = 1; j <= 8; j++) s[8 + (k - 7) * 8 + j - 1] = (1u << k) + j * (1u << (k - 3));
  return s;
}
inline constexpr std::array<uint32_t, kNumClasses> kClassSize = make_class_sizes();

constexpr bool class_is_small(unsigned c) { return kClassSize[c] <= kSmallMax; }

// The direct table maps (size + 15) / 16 to a class for sizes <= kDirectMax.
constexpr std::array<uint8_t, kDirectSlots> make_direct_classes() {
  std::array<uint8_t, kDirectSlots> d{};
  for (size_t i = 0; i < kDirectSlots; i++)
    d[i] = static_cast<uint8_t>(size_to_class(i == 0 ? 1 : i * 16));
  return d;
}
inline constexpr std::array<uint8_t, kDirectSlots> kDirectClass = make_direct_classes();

static_assert(kClassSize[kNumClasses - 1] == kMediumMax);
static_assert(size_to_class(kMediumMax) == kNumClasses - 1);
static_assert(size_to_class(129) == 8 && kClassSize[8] == 144);
static_assert(size_to_class(256) == 15 && kClassSize[15] == 256);
static_assert(size_to_class(257) == 16 && kClassSize[16] == 288);

}  // namespace am
