#include "amalloc_test_support.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <vector>

extern char** environ;

// Make sanitizer findings fail the test instead of scrolling past.
#if AMT_UBSAN
extern "C" const char* __ubsan_default_options() { return "halt_on_error=1:print_stacktrace=1"; }
#endif
#if AMT_TSAN
extern "C" const char* __tsan_default_options() {
  return "halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0";
}
#endif

namespace amt {

double scale() {
  static const double value = [] {
    if (const char* s = std::getenv("AMALLOC_TEST_SCALE")) {
      char* end = nullptr;
      double v = std::strtod(s, &end);
      if (end != s && v > 0) return v;
    }
#if AMT_TSAN
    return 0.3;
#elif AMT_ASAN
    return 0.5;
#else
    return 1.0;
#endif
  }();
  return value;
}

std::size_t scaled(std::size_t n, std::size_t minimum) {
  double v = static_cast<double>(n) * scale();
  std::size_t r = static_cast<std::size_t>(v);
  return r < minimum ? minimum : r;
}

std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

namespace {
inline std::uint64_t pattern_word(std::uint64_t base, std::size_t i) {
  // Cheap and different for every word and every seed.
  return base + static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ULL;
}
}  // namespace

void fill_pattern(void* p, std::size_t n, std::uint64_t seed) {
  unsigned char* b = static_cast<unsigned char*>(p);
  const std::uint64_t base = mix64(seed);
  const std::size_t words = n / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t w = pattern_word(base, i);
    std::memcpy(b + i * 8, &w, 8);
  }
  if (n % 8) {
    std::uint64_t w = pattern_word(base, words);
    std::memcpy(b + words * 8, &w, n % 8);
  }
}

std::size_t check_pattern(const void* p, std::size_t n, std::uint64_t seed) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  const std::uint64_t base = mix64(seed);
  const std::size_t words = n / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t w;
    std::memcpy(&w, b + i * 8, 8);
    if (w != pattern_word(base, i)) {
      std::uint64_t want = pattern_word(base, i);
      for (std::size_t k = 0; k < 8; ++k)
        if (b[i * 8 + k] != reinterpret_cast<const unsigned char*>(&want)[k]) return i * 8 + k;
    }
  }
  if (n % 8) {
    std::uint64_t want = pattern_word(base, words);
    for (std::size_t k = 0; k < n % 8; ++k)
      if (b[words * 8 + k] != reinterpret_cast<const unsigned char*>(&want)[k])
        return words * 8 + k;
  }
  return SIZE_MAX;
}

std::size_t check_bytes(const void* p, std::size_t n, unsigned char value) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  std::uint64_t want;
  std::memset(&want, value, 8);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, b + i, 8);
    if (w != want) break;
  }
  for (; i < n; ++i)
    if (b[i] != value) return i;
  return SIZE_MAX;
}

std::size_t rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  int got = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return got == 2 ? resident * page_size() : 0;
}

std::size_t resident_kib(const void* p, std::size_t bytes) {
  std::vector<unsigned char> v((bytes + page_size() - 1) / page_size());
  if (mincore(const_cast<void*>(p), bytes, v.data()) != 0) return SIZE_MAX;
  std::size_t n = 0;
  for (unsigned char c : v) n += c & 1;
  return n * page_size() / 1024;
}

namespace {
std::uint64_t g_bad_frees_mark;
}

void mark_bad_frees() { g_bad_frees_mark = stats().bad_frees; }
std::uint64_t bad_frees_since_mark() { return stats().bad_frees - g_bad_frees_mark; }

long long value_of(const std::string& out, const std::string& key) {
  std::istringstream is(out);
  std::string line;
  while (std::getline(is, line))
    if (line.compare(0, key.size() + 1, key + " ") == 0)
      return std::atoll(line.c_str() + key.size() + 1);
  return -1;
}

std::size_t page_size() {
  static const std::size_t ps = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return ps;
}

am_stats_t stats() {
  am_stats_t s;
  std::memset(&s, 0xA5, sizeof s);  // catch fields left unset
  am_stats_get(&s);
  return s;
}

namespace {
std::string temp_path(const char* tag) {
  const char* dir = std::getenv("TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  return std::string(dir) + "/amalloc-test-" + tag + "-XXXXXX";
}

// A new, already unlinked temporary file.
int temp_fd(const char* tag) {
  std::string path = temp_path(tag);
  std::vector<char> buf(path.begin(), path.end());
  buf.push_back('\0');
  int fd = mkstemp(buf.data());
  if (fd >= 0) unlink(buf.data());
  return fd;
}

std::string read_all(int fd) {
  std::string s;
  if (lseek(fd, 0, SEEK_SET) < 0) return s;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    s.append(buf, static_cast<std::size_t>(n));
  }
  return s;
}
}  // namespace

std::string capture_stderr(const std::function<void()>& fn) {
  std::fflush(stderr);
  int fd = temp_fd("stderr");
  if (fd < 0) return "<capture_stderr: mkstemp failed>";
  int saved = dup(2);
  dup2(fd, 2);
  fn();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::string s = read_all(fd);
  close(fd);
  return s;
}

bool ChildResult::exited_ok() const {
  return WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
}

std::string ChildResult::describe() const {
  std::ostringstream os;
  if (wait_status == -1)
    os << "child not run";
  else if (WIFEXITED(wait_status))
    os << "child exited with code " << WEXITSTATUS(wait_status);
  else if (WIFSIGNALED(wait_status))
    os << "child killed by signal " << WTERMSIG(wait_status) << " ("
       << strsignal(WTERMSIG(wait_status)) << ")";
  else
    os << "child wait status " << wait_status;
  os << "\n--- child stdout ---\n" << out << "--- child stderr ---\n" << err << "--- end ---";
  return os.str();
}

ChildResult run_scenario(const std::string& name,
                         const std::vector<std::pair<std::string, std::string>>& env,
                         int timeout_seconds) {
  ChildResult r;
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string kv(*e);
    bool replaced = false;
    for (auto& [k, v] : env)
      if (kv.compare(0, k.size() + 1, k + "=") == 0) replaced = true;
    if (!replaced) env_strings.push_back(kv);
  }
  for (auto& [k, v] : env)
    if (!v.empty()) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  std::string exe = "/proc/self/exe";
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len > 0) exe.assign(self, static_cast<std::size_t>(len));
  std::string arg = "--amalloc-scenario=" + name;
  std::vector<char*> argv = {exe.data(), arg.data(), nullptr};

  int out_fd = temp_fd("out");
  int err_fd = temp_fd("err");
  if (out_fd < 0 || err_fd < 0) {
    r.err = "run_scenario: mkstemp failed";
    return r;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = std::string("run_scenario: posix_spawn failed: ") + std::strerror(rc);
    close(out_fd);
    close(err_fd);
    return r;
  }
  int status = 0;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  bool timed_out = false;
  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec > timeout_seconds) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      timed_out = true;
      break;
    }
    usleep(2000);
  }
  r.wait_status = status;
  r.out = read_all(out_fd);
  r.err = read_all(err_fd);
  if (timed_out) r.err += "\n[run_scenario: child timed out and was killed]\n";
  close(out_fd);
  close(err_fd);
  return r;
}

std::map<std::string, ScenarioFn>& scenarios() {
  static std::map<std::string, ScenarioFn> m;
  return m;
}

bool maybe_run_scenario(int argc, char** argv, int* exit_code) {
  static const char kFlag[] = "--amalloc-scenario=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], kFlag, sizeof kFlag - 1) == 0) {
      std::string name = argv[i] + sizeof kFlag - 1;
      auto it = scenarios().find(name);
      if (it == scenarios().end()) {
        std::fprintf(stderr, "unknown scenario %s\n", name.c_str());
        *exit_code = 99;
      } else {
        *exit_code = it->second();
      }
      std::fflush(stdout);
      std::fflush(stderr);
      return true;
    }
  }
  return false;
}

std::vector<std::uintptr_t> hex_numbers(const std::string& text) {
  std::vector<std::uintptr_t> v;
  for (std::size_t i = 0; i + 2 < text.size(); ++i) {
    if (text[i] == '0' && (text[i + 1] == 'x' || text[i + 1] == 'X') &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      std::size_t j = i + 2;
      std::uintptr_t x = 0;
      while (j < text.size() && std::isxdigit(static_cast<unsigned char>(text[j]))) {
        char c = text[j];
        int d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
        x = x * 16 + static_cast<std::uintptr_t>(d);
        ++j;
      }
      v.push_back(x);
      i = j - 1;
    }
  }
  return v;
}

std::vector<std::string> lines_containing(const std::string& text, const std::string& needle) {
  std::vector<std::string> v;
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line))
    if (line.find(needle) != std::string::npos) v.push_back(line);
  return v;
}

}  // namespace amt
