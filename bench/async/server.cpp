// am_wl_server: an HTTP-like server on epoll event loops, one C++20
// coroutine per connection, driven over loopback by a client process.
//
// The server (this process) runs --threads event loops. Loop 0 also accepts:
// it creates each connection's coroutine frame and hands the connection to a
// loop round robin, so the frame is allocated on the accepting thread and
// freed on the serving one. Each request is parsed into per-request objects
// (std::string request line, a std::map of headers, a std::vector body) and
// answered with a body that starts with a hash of the request.
//
// The client is a forked child process (forked before any thread exists) with
// --threads threads, each driving its share of the connections through its
// own epoll loop, one request in flight per connection. It generates every
// request from the seed, verifies every response (hash, length, filler) and
// measures its latency, and reports back over a pipe.
//
// 127.0.0.1 only, port 0 (kernel-chosen). Bounded: a fixed number of
// requests; if the client has not reported within the soft cap the child is
// killed, the line says checksum_ok false and the exit status is 3.
//
// Metrics: requests_per_s (primary), time_s, requests, connections,
// client_threads, peak_rss_kib (VmHWM of the server process),
// conn_cross_frees; latency_ns: request round trip as the client sees it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../wl_common.h"
#include "coro_pool.h"

namespace {

// ---- the request format, shared by client and server ------------------------

uint64_t fnv1a(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;

// The hash the server answers with: method, path, every header (lower-case
// name, in name order) and the body.
uint64_t request_hash(std::string_view method, std::string_view path,
                      const std::map<std::string, std::string>& headers, std::string_view body) {
  uint64_t h = fnv1a(kFnvBasis, method);
  h = fnv1a(h, " ");
  h = fnv1a(h, path);
  for (const auto& [k, v] : headers) {
    h = fnv1a(h, "\n");
    h = fnv1a(h, k);
    h = fnv1a(h, ":");
    h = fnv1a(h, v);
  }
  h = fnv1a(h, "\n\n");
  return fnv1a(h, body);
}

char filler(uint64_t hash, size_t i) {
  return char('a' + (wl_mix(hash + i / 8) >> (i % 8 * 8)) % 26);
}

// The response body: the hash in 16 hex digits, then filler up to `len`.
std::string response_body(uint64_t hash, size_t len) {
  std::string b = wl_hex(hash);
  b.reserve(len);
  for (size_t i = b.size(); i < len; ++i) b += filler(hash, i);
  return b;
}

// ---- the server -------------------------------------------------------------

struct Request {
  std::string method, path, version;
  std::map<std::string, std::string> headers;
  std::vector<char> body;
};

// Parses one complete request at the start of `in`; returns its length in
// bytes, 0 if incomplete, or -1 if malformed.
long parse_request(const std::string& in, Request& req) {
  size_t end = in.find("\r\n\r\n");
  if (end == std::string::npos) return 0;
  size_t pos = in.find("\r\n");
  std::string_view line(in.data(), pos);
  size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 == sp1) return -1;
  req.method = std::string(line.substr(0, sp1));
  req.path = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
  req.version = std::string(line.substr(sp2 + 1));
  while (pos < end) {
    size_t next = in.find("\r\n", pos + 2);
    std::string_view h(in.data() + pos + 2, next - pos - 2);
    pos = next;
    size_t colon = h.find(':');
    if (colon == std::string_view::npos) return -1;
    std::string name(h.substr(0, colon));
    for (char& c : name)
      if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
    size_t v = colon + 1;
    while (v < h.size() && h[v] == ' ') ++v;
    req.headers[std::move(name)] = std::string(h.substr(v));
  }
  size_t body_len = 0;
  if (auto it = req.headers.find("content-length"); it != req.headers.end())
    body_len = size_t(std::strtoull(it->second.c_str(), nullptr, 10));
  const size_t total = end + 4 + body_len;
  if (in.size() < total) return 0;
  req.body.assign(in.begin() + long(end + 4), in.begin() + long(total));
  return long(total);
}

// A connection's coroutine: starts suspended (the acceptor creates it and
// hands it to a loop), frees its frame when it ends.
struct ConnTask {
  struct promise_type : wl_async::FrameOwner {
    ConnTask get_return_object() {
      return ConnTask{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { std::terminate(); }
  };
  std::coroutine_handle<promise_type> h;
};

// What epoll reports to: the coroutine waiting on this fd, if any.
struct IoState {
  int fd = -1;
  std::coroutine_handle<> waiter;
};

struct IoWait {
  IoState& io;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept { io.waiter = h; }
  void await_resume() const noexcept {}
};

struct Loop {
  int ep = -1;
  int wake = -1;
  std::mutex m;
  std::vector<std::coroutine_handle<>> inbox;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> served{0};
  uint64_t frames = 0, cross_frees = 0;
  std::thread th;

  void post(std::coroutine_handle<> h) {
    {
      std::lock_guard<std::mutex> lk(m);
      inbox.push_back(h);
    }
    uint64_t one = 1;
    if (write(wake, &one, sizeof one) < 0) std::perror("am_wl_server: eventfd write");
  }
};

std::atomic<long> g_live_conns{0};

ConnTask serve(Loop& loop, int fd) {
  IoState io{fd, {}};
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = &io;
  if (epoll_ctl(loop.ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    std::perror("am_wl_server: epoll_ctl");
    close(fd);
    g_live_conns.fetch_sub(1);
    co_return;
  }
  std::vector<char> rbuf(8192);
  std::string in;
  bool open = true;
  while (open) {
    ssize_t n = read(fd, rbuf.data(), rbuf.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        co_await IoWait{io};
        continue;
      }
      break;
    }
    in.append(rbuf.data(), size_t(n));
    size_t consumed = 0;
    while (open) {
      auto req = std::make_unique<Request>();
      std::string rest = in.substr(consumed);  // a per-request copy, as a parser might make
      long len = parse_request(rest, *req);
      if (len < 0) {
        std::fprintf(stderr, "am_wl_server: malformed request\n");
        open = false;
        break;
      }
      if (len == 0) break;
      consumed += size_t(len);
      const uint64_t hash = request_hash(req->method, req->path, req->headers,
                                         std::string_view(req->body.data(), req->body.size()));
      size_t resp_len = 16;
      if (auto it = req->headers.find("x-resp-len"); it != req->headers.end())
        resp_len = std::max<size_t>(16, std::strtoull(it->second.c_str(), nullptr, 10));
      std::string body = response_body(hash, resp_len);
      std::string out = "HTTP/1.1 200 OK\r\nServer: am_wl_server\r\nContent-Length: ";
      out += std::to_string(body.size());
      out += "\r\n\r\n";
      out += body;
      size_t off = 0;
      while (off < out.size()) {
        ssize_t w = send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
        if (w > 0) {
          off += size_t(w);
        } else if (w < 0 && errno == EAGAIN) {
          co_await IoWait{io};
        } else if (w < 0 && errno == EINTR) {
          continue;
        } else {
          open = false;
          break;
        }
      }
      if (open) loop.served.fetch_add(1, std::memory_order_relaxed);
    }
    in.erase(0, consumed);
  }
  epoll_ctl(loop.ep, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  g_live_conns.fetch_sub(1);
}

char g_listen_tag, g_wake_tag;

void run_loop(std::vector<std::unique_ptr<Loop>>& loops, unsigned self, int listen_fd) {
  Loop& loop = *loops[self];
  unsigned next = 0;
  epoll_event evs[64];
  std::vector<std::coroutine_handle<>> ready;
  while (!loop.stop.load(std::memory_order_acquire)) {
    int n = epoll_wait(loop.ep, evs, 64, 50);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("am_wl_server: epoll_wait");
      break;
    }
    for (int i = 0; i < n; ++i) {
      void* tag = evs[i].data.ptr;
      if (tag == &g_wake_tag) {
        uint64_t v;
        if (read(loop.wake, &v, sizeof v) < 0 && errno != EAGAIN)
          std::perror("am_wl_server: eventfd read");
        {
          std::lock_guard<std::mutex> lk(loop.m);
          ready.swap(loop.inbox);
        }
        for (auto h : ready) h.resume();
        ready.clear();
      } else if (tag == &g_listen_tag) {
        for (;;) {
          int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          g_live_conns.fetch_add(1);
          Loop& target = *loops[next++ % loops.size()];
          ConnTask t = serve(target, fd);  // the frame is allocated here, on loop 0
          if (&target == &loop)
            t.h.resume();
          else
            target.post(t.h);
        }
      } else {
        auto* io = static_cast<IoState*>(tag);
        if (io->waiter) std::exchange(io->waiter, {}).resume();
      }
    }
  }
  loop.frames = wl_async::tl_frames;
  loop.cross_frees = wl_async::tl_cross_frees;
}

// ---- the client ---------------------------------------------------------------

struct ClientReport {
  uint64_t ok = 0, bad = 0, sum = 0;
  double elapsed = 0, p50 = 0, p99 = 0, p999 = 0;
  uint64_t done = 0;  // 1 when complete
};

struct ClientConn {
  int fd = -1;
  unsigned id = 0;
  uint64_t next_req = 0, n_req = 0;
  std::string out;
  size_t out_off = 0;
  std::string in;
  uint64_t expect_hash = 0;
  size_t expect_len = 0;
  uint64_t t_start = 0;
  bool finished = false;
};

// Builds request j of connection c from the seed; sets the expected hash and
// response length.
void make_request(uint64_t seed, ClientConn& c) {
  wl_rng rng(wl_mix(seed ^ (uint64_t(c.id) << 40) ^ c.next_req));
  std::map<std::string, std::string> h;
  const bool post = rng.below(2) == 0;
  std::string path = "/api/v1/items/" + std::to_string(rng.below(100000)) +
                     "?conn=" + std::to_string(c.id) + "&seq=" + std::to_string(c.next_req);
  std::string body;
  if (post) {
    body.resize(16 + rng.below(2032));
    for (auto& ch : body) ch = char('A' + rng.below(26));
    h["content-length"] = std::to_string(body.size());
    h["content-type"] = "application/octet-stream";
  }
  h["host"] = "127.0.0.1";
  h["user-agent"] = "am_wl_server-client/1";
  h["accept"] = "*/*";
  h["x-resp-len"] = std::to_string(16 + rng.below(4080));
  const unsigned extra = rng.below(9);
  for (unsigned k = 0; k < extra; ++k) {
    std::string v(4 + rng.below(61), ' ');
    for (auto& ch : v) ch = char('a' + rng.below(26));
    h["x-extra-" + std::to_string(k)] = std::move(v);
  }
  const char* method = post ? "POST" : "GET";
  c.expect_hash = request_hash(method, path, h, body);
  c.expect_len = std::stoul(h["x-resp-len"]);
  c.out = std::string(method) + " " + path + " HTTP/1.1\r\n";
  for (const auto& [k, v] : h) {
    // Capitalise the first letter: the server must lower-case names.
    std::string name = k;
    name[0] = char(name[0] - 'a' + 'A');
    c.out += name + ": " + v + "\r\n";
  }
  c.out += "\r\n";
  c.out += body;
  c.out_off = 0;
  c.in.clear();
}

// Checks a complete response in c.in; returns 1 done and ok, -1 done and
// wrong, 0 incomplete.
int check_response(ClientConn& c) {
  size_t end = c.in.find("\r\n\r\n");
  if (end == std::string::npos) return 0;
  size_t cl = c.in.find("Content-Length: ");
  if (cl == std::string::npos || cl > end) return -1;
  size_t len = size_t(std::strtoull(c.in.c_str() + cl + 16, nullptr, 10));
  if (c.in.size() < end + 4 + len) return 0;
  if (c.in.size() != end + 4 + len) return -1;  // one request in flight: nothing more
  std::string_view body(c.in.data() + end + 4, len);
  if (len != c.expect_len || body.substr(0, 16) != wl_hex(c.expect_hash)) return -1;
  for (size_t i = 16; i < len; i += 97)
    if (body[i] != filler(c.expect_hash, i)) return -1;
  if (len > 16 && body[len - 1] != filler(c.expect_hash, len - 1)) return -1;
  return 1;
}

struct ClientThreadResult {
  uint64_t ok = 0, bad = 0;
  WlChecksum sum;
  std::vector<uint64_t> lat;
};

// One request in flight per connection: write the request, read until the
// whole response is there, verify it, start the next. Returns when the
// socket would block or the connection is done.
void pump(uint64_t seed, ClientConn& c, ClientThreadResult& res) {
  char buf[16384];
  while (!c.finished) {
    while (c.out_off < c.out.size()) {
      ssize_t w = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (w > 0) {
        c.out_off += size_t(w);
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else if (w < 0 && errno == EAGAIN) {
        return;
      } else {
        ++res.bad;
        c.finished = true;
        return;
      }
    }
    ssize_t n = read(c.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      std::fprintf(stderr, "am_wl_server: client: connection %u closed early\n", c.id);
      ++res.bad;
      c.finished = true;
      return;
    }
    c.in.append(buf, size_t(n));
    int st = check_response(c);
    if (st == 0) continue;
    res.lat.push_back(wl_now_ns() - c.t_start);
    if (st > 0) {
      ++res.ok;
      res.sum.add(c.expect_hash);
    } else {
      ++res.bad;
      std::fprintf(stderr, "am_wl_server: client: wrong response on connection %u, request %llu\n",
                   c.id, static_cast<unsigned long long>(c.next_req));
    }
    if (++c.next_req == c.n_req) {
      c.finished = true;
      return;
    }
    make_request(seed, c);
    c.t_start = wl_now_ns();
  }
}

void client_thread(uint16_t port, uint64_t seed, std::vector<ClientConn*> conns,
                   ClientThreadResult& res, double deadline) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  size_t active = 0;
  for (ClientConn* c : conns) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c->fd < 0 || connect(c->fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      std::perror("am_wl_server: client connect");
      ++res.bad;
      c->finished = true;
      continue;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    if (c->n_req == 0) {
      c->finished = true;
      continue;
    }
    ++active;
    make_request(seed, *c);
    c->t_start = wl_now_ns();
    pump(seed, *c, res);
    if (c->finished) --active;
  }
  epoll_event evs[64];
  while (active > 0 && wl_now_s() < deadline) {
    int n = epoll_wait(ep, evs, 64, 50);
    for (int i = 0; i < n; ++i) {
      auto* c = static_cast<ClientConn*>(evs[i].data.ptr);
      if (c->finished) continue;
      pump(seed, *c, res);
      if (c->finished) --active;
    }
  }
  for (ClientConn* c : conns)
    if (c->fd >= 0) close(c->fd);
  close(ep);
}

// The child process: connects, drives every request, reports on `out`.
[[noreturn]] void run_client(int out, uint16_t port, const WlArgs& args, unsigned conns_n,
                             uint64_t requests, double deadline) {
  std::vector<ClientConn> conns(conns_n);
  for (unsigned i = 0; i < conns_n; ++i) {
    conns[i].id = i;
    conns[i].n_req = requests / conns_n + (i < requests % conns_n ? 1 : 0);
  }
  const unsigned nt = std::min<unsigned>(args.threads, conns_n);
  std::vector<ClientThreadResult> res(nt);
  for (auto& r : res) r.lat.reserve(size_t(requests / nt + 16));
  const double t0 = wl_now_s();
  std::vector<std::thread> th;
  for (unsigned t = 0; t < nt; ++t) {
    std::vector<ClientConn*> mine;
    for (unsigned i = t; i < conns_n; i += nt) mine.push_back(&conns[i]);
    th.emplace_back(client_thread, port, args.seed, std::move(mine), std::ref(res[t]), deadline);
  }
  for (auto& t : th) t.join();
  ClientReport rep;
  rep.elapsed = wl_now_s() - t0;
  WlChecksum sum;
  std::vector<uint64_t> lat;
  for (auto& r : res) {
    rep.ok += r.ok;
    rep.bad += r.bad;
    sum.merge(r.sum);
    lat.insert(lat.end(), r.lat.begin(), r.lat.end());
  }
  rep.sum = sum.sum ^ wl_mix(sum.count);
  rep.p50 = wl_percentile(lat, 0.5);
  rep.p99 = wl_percentile(lat, 0.99);
  rep.p999 = wl_percentile(lat, 0.999);
  rep.done = 1;
  if (write(out, &rep, sizeof rep) != ssize_t(sizeof rep))
    std::perror("am_wl_server: client report");
  close(out);
  std::fflush(nullptr);
  _exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  WlArgs args = wl_parse(argc, argv, "server");
  wl_arm_hard_cap(args);
  const unsigned conns_n = wl_pick(args, 4u, 64u, 256u);
  const uint64_t requests = wl_pick<uint64_t>(args, 200, 20000, 200000);
  const double soft_cap = wl_soft_cap_s(args);

  WlResult r;
  r.workload = "server";
  r.size = args.size;
  r.threads = args.threads;
  r.primary = "requests_per_s";
  r.better = "higher";

  // The listening socket first, then the client process, then threads.
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (lfd < 0 || bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(lfd, 4096) != 0 || getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &alen) != 0) {
    std::perror("am_wl_server: listen");
    return 1;
  }
  const uint16_t port = ntohs(a.sin_port);
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    std::perror("am_wl_server: pipe");
    return 1;
  }
  const double t_begin = wl_now_s();
  std::fflush(nullptr);
  pid_t child = fork();
  if (child < 0) {
    std::perror("am_wl_server: fork");
    return 1;
  }
  if (child == 0) {
    close(pipefd[0]);
    close(lfd);
    run_client(pipefd[1], port, args, conns_n, requests, t_begin + soft_cap);
  }
  close(pipefd[1]);

  std::vector<std::unique_ptr<Loop>> loops;
  for (unsigned i = 0; i < args.threads; ++i) {
    auto l = std::make_unique<Loop>();
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &g_wake_tag;
    epoll_ctl(l->ep, EPOLL_CTL_ADD, l->wake, &ev);
    loops.push_back(std::move(l));
  }
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.ptr = &g_listen_tag;
  epoll_ctl(loops[0]->ep, EPOLL_CTL_ADD, lfd, &lev);
  for (unsigned i = 0; i < args.threads; ++i)
    loops[i]->th = std::thread(run_loop, std::ref(loops), i, lfd);

  // Wait for the client's report, at most until the soft cap.
  ClientReport rep;
  size_t got = 0;
  bool timed_out = false;
  while (got < sizeof rep) {
    const double left = t_begin + soft_cap + 1.0 - wl_now_s();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{pipefd[0], POLLIN, 0};
    int pr = poll(&p, 1, int(left * 1000) + 1);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    ssize_t n = read(pipefd[0], reinterpret_cast<char*>(&rep) + got, sizeof rep - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the client died
    got += size_t(n);
  }
  if (got < sizeof rep || rep.done != 1) {
    std::fprintf(stderr, "am_wl_server: %s\n",
                 timed_out ? "time-out: the client did not finish" : "the client died");
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    r.metric("time_s", wl_now_s() - t_begin);
    r.checksum = "0";
    r.checksum_ok = false;
    wl_print(r);
    std::fflush(nullptr);
    _exit(3);
  }
  int status = 0;
  waitpid(child, &status, 0);
  // The client closed its connections: let the loops see the EOFs (bounded).
  for (int i = 0; i < 200 && g_live_conns.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const double peak = double(peak_rss_kib());
  uint64_t served = 0, frames = 0, cross = 0;
  for (auto& l : loops) {
    l->stop.store(true, std::memory_order_release);
    uint64_t v = 1;
    if (write(l->wake, &v, sizeof v) < 0) std::perror("am_wl_server: eventfd write");
  }
  for (auto& l : loops) {
    l->th.join();
    served += l->served.load();
    frames += l->frames;
    cross += l->cross_frees;
    close(l->ep);
    close(l->wake);
  }
  close(lfd);

  const bool ok = rep.ok == requests && rep.bad == 0 && served == requests && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0;
  if (!ok)
    std::fprintf(
        stderr, "am_wl_server: %llu responses verified, %llu wrong, %llu served, %llu expected\n",
        static_cast<unsigned long long>(rep.ok), static_cast<unsigned long long>(rep.bad),
        static_cast<unsigned long long>(served), static_cast<unsigned long long>(requests));
  r.metric("requests_per_s", double(rep.ok) / rep.elapsed);
  r.metric("time_s", rep.elapsed);
  r.metric("requests", double(rep.ok));
  r.metric("connections", conns_n);
  r.metric("client_threads", std::min<unsigned>(args.threads, conns_n));
  r.metric("peak_rss_kib", peak);
  r.metric("conn_frames", double(frames));
  r.metric("conn_cross_frees", double(cross));
  r.metric("open_conns_at_end", double(g_live_conns.load()));
  r.latency = WlLatency{rep.p50, rep.p99, rep.p999};
  r.checksum = wl_hex(rep.sum);
  r.checksum_ok = ok;
  std::fprintf(stderr, "server: %u loops, %u connections, %llu requests in %.3f s\n", args.threads,
               conns_n, static_cast<unsigned long long>(rep.ok), rep.elapsed);
  return wl_finish(r);
}
