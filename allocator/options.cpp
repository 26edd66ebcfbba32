#include "allocator/options.h"

#include <unistd.h>

#include "allocator/format.h"

extern "C" char** environ;

namespace am {

Options g_options;

namespace {

bool starts_with(const char* s, const char* prefix, const char** rest) {
  while (*prefix)
    if (*s++ != *prefix++) return false;
  *rest = s;
  return true;
}

bool equals(const char* a, const char* b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

uint32_t parse_u32(const char* s, uint32_t fallback) {
  if (*s < '0' || *s > '9') return fallback;
  uint64_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    v = v * 10 + static_cast<uint64_t>(*s - '0');
    if (v > 0xffffffffu) return fallback;
  }
  return static_cast<uint32_t>(v);
}

void warn_unknown(const char* entry) {
  Out o;
  o.str("amalloc: ignoring unknown or invalid option ").str(entry).ch('\n').flush(2);
}

}  // namespace

bool options_init() {
  if (environ == nullptr) return false;
  for (char** e = environ; *e; e++) {
    const char* v;
    if (!starts_with(*e, "AMALLOC_", &v)) continue;
    if (starts_with(*e, "AMALLOC_STATS=", &v)) {
      g_options.stats = equals(v, "json")             ? kStatsJson
                        : (equals(v, "0") || *v == 0) ? kStatsOff
                                                      : kStatsText;
    } else if (starts_with(*e, "AMALLOC_BAD_FREE=", &v)) {
      if (equals(v, "abort"))
        g_options.bad_free = kBadFreeAbort;
      else if (equals(v, "report"))
        g_options.bad_free = kBadFreeReport;
      else
        warn_unknown(*e);
    } else if (starts_with(*e, "AMALLOC_PURGE=", &v)) {
      if (equals(v, "free"))
        g_options.purge_free = 1;
      else if (equals(v, "dontneed"))
        g_options.purge_free = 0;
      else
        warn_unknown(*e);
    } else if (starts_with(*e, "AMALLOC_PURGE_DELAY=", &v)) {
      g_options.purge_delay_ms = parse_u32(v, g_options.purge_delay_ms);
    } else if (starts_with(*e, "AMALLOC_SEGMENT_CACHE=", &v)) {
      g_options.segment_cache = parse_u32(v, g_options.segment_cache);
    } else if (starts_with(*e, "AMALLOC_BACKGROUND=", &v)) {
      g_options.background = !equals(v, "0");
    } else if (starts_with(*e, "AMALLOC_PREDICT=", &v)) {
      g_options.predict = !equals(v, "0");
    } else if (starts_with(*e, "AMALLOC_MESH=", &v)) {
      g_options.mesh = !equals(v, "0");
    } else if (starts_with(*e, "AMALLOC_TRIM=", &v)) {
      g_options.trim = !equals(v, "0");
    } else if (starts_with(*e, "AMALLOC_EPOCH_WARN_MS=", &v)) {
      g_options.epoch_warn_ms = parse_u32(v, g_options.epoch_warn_ms);
    } else if (starts_with(*e, "AMALLOC_EPOCH_MEMBARRIER=", &v)) {
      g_options.epoch_membarrier = !equals(v, "0");
    } else if (starts_with(*e, "AMALLOC_VERBOSE=", &v)) {
      g_options.verbose = !equals(v, "0");
    } else {
      warn_unknown(*e);
    }
  }
  return true;
}

}  // namespace am
