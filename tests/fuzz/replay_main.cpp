// Runs the fuzz target without libFuzzer, so every normal build checks the
// seed corpus (and a few thousand deterministic random inputs):
//   amalloc_fuzz_replay [--random=N] FILE_OR_DIR...
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

int run_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path.c_str());
    return 1;
  }
  std::vector<std::uint8_t> buf;
  std::uint8_t chunk[4096];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) buf.insert(buf.end(), chunk, chunk + n);
  std::fclose(f);
  LLVMFuzzerTestOneInput(buf.data(), buf.size());
  return 0;
}

int run_path(const std::string& path, int* count) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "no such file or directory: %s\n", path.c_str());
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    ++*count;
    return run_file(path);
  }
  DIR* d = opendir(path.c_str());
  if (!d) return 1;
  std::vector<std::string> names;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') names.push_back(path + "/" + e->d_name);
  closedir(d);
  int rc = 0;
  for (auto& name : names) rc |= run_path(name, count);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  int rc = 0, count = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--random=", 9) == 0) {
      long inputs = std::strtol(argv[i] + 9, nullptr, 10);
      std::uint64_t s = 0x243F6A8885A308D3ULL;
      std::vector<std::uint8_t> buf;
      for (long k = 0; k < inputs; ++k) {
        buf.resize(5 * (1 + k % 200));
        for (std::size_t j = 0; j < buf.size(); ++j) {
          s ^= s << 13;
          s ^= s >> 7;
          s ^= s << 17;
          std::uint8_t b = static_cast<std::uint8_t>(s >> 24);
          // The first size byte picks the size class: keep huge blocks
          // (class 3) rare so a run takes seconds, not minutes.
          if (j % 5 == 2) {
            unsigned r = static_cast<unsigned>(s >> 40) % 100;
            unsigned cls = r < 60 ? 0 : r < 90 ? 1 : r < 98 ? 2 : 3;
            b = static_cast<std::uint8_t>((cls << 6) | (b & 63));
          }
          buf[j] = b;
        }
        LLVMFuzzerTestOneInput(buf.data(), buf.size());
        ++count;
      }
    } else {
      rc |= run_path(argv[i], &count);
    }
  }
  std::printf("ran %d inputs\n", count);
  return rc;
}
