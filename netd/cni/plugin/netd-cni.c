/*
 * netd CNI plugin: a thin client of the host's netd daemon.
 *
 * Why C and not Node or sh: a runtime starts the plugin for every ADD and DEL. Node's start-up
 * (~120 ms here) and even POSIX sh + socat (~8 ms: six execs) would dwarf the work the daemon
 * does. This program execs nothing: ~1 ms. It knows no CNI semantics beyond its own error answers;
 * the daemon does all the rest (docs/decisions/0008-native-cni-shim-and-add-path.md).
 *
 * It connects to <socket dir>/net-<inode of its own network namespace>.sock, so it always reaches
 * the daemon of the host whose namespace it runs in (also when virtual hosts share a filesystem).
 * Request: the CNI_* environment as KEY=VALUE lines, an empty line, then stdin until EOF.
 * Reply: the exit status on the first line, then what to print on stdout.
 *
 * When it cannot get the daemon's answer (not running, no reply), it answers a CNI error itself, in
 * the request's cniVersion (read from the config's beginning): code 50, "plugin not available", for
 * STATUS (CNI 1.1: STATUS errors are 50 and 51), code 11, "try again later", for the other verbs.
 *
 * The socket directory is patched into SOCKET_DIR by `netd install-cni` (see install-cni.ts):
 * the marker below is followed by zero bytes up to SOCKET_DIR_SIZE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define SOCKET_DIR_SIZE 256
#define REPLY_LIMIT (16 * 1024 * 1024)
#define TIMEOUT_SECONDS 130
/* The config's first bytes, read before connecting: where its cniVersion is looked for. */
#define CONFIG_HEAD_SIZE 65536
#define VERSION_MAX 32
#define FALLBACK_VERSION "1.1.0"
#define CODE_TRY_AGAIN_LATER 11
#define CODE_PLUGIN_NOT_AVAILABLE 50

extern char **environ;

/* volatile: the compiler must not fold the patched bytes into constants. */
static volatile const char SOCKET_DIR[SOCKET_DIR_SIZE] = "@@NETD_SOCKET_DIR@@/run/netd";

static const char VERSION_REPLY[] =
    "{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n";

/* What the shim's own error answers say: set once the request is known. */
static char request_version[VERSION_MAX + 1] = FALLBACK_VERSION;
static int error_code = CODE_TRY_AGAIN_LATER;

/* The timeout's answer, prepared beforehand (a signal handler may only write): the handler
 * writes the slot prepared last, which is complete before it is published. */
static char timeout_reply[2][160];
static size_t timeout_reply_len[2];
static volatile sig_atomic_t timeout_slot = 0;

/* A CNI error on stdout and exit status 1. `msg` is a constant without quotes or backslashes. */
static void fail(const char *msg) {
  printf("{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":\"%s\"}\n", request_version, error_code, msg);
  fflush(stdout);
  exit(1);
}

static void prepare_timeout_reply(int slot) {
  int n = snprintf(timeout_reply[slot], sizeof timeout_reply[slot],
                   "{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":\"netd did not answer in time\"}\n",
                   request_version, error_code);
  timeout_reply_len[slot] = n > 0 && (size_t)n < sizeof timeout_reply[slot] ? (size_t)n : 0;
  atomic_signal_fence(memory_order_seq_cst);
  timeout_slot = slot;
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

static void on_alarm(int sig) {
  (void)sig;
  int slot = timeout_slot;
  (void)!write(1, timeout_reply[slot], timeout_reply_len[slot]);
  _exit(1);
}

static int version_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '+' ||
         c == '-';
}

static int json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* The end (closing quote) of the JSON string opening at buf[start], or -1 if it is cut short. */
static long string_end(const char *buf, size_t len, size_t start) {
  for (size_t i = start + 1; i < len; i++) {
    if (buf[i] == '\\') i++;
    else if (buf[i] == '"') return (long)i;
  }
  return -1;
}

/*
 * Copies the value of the top-level "cniVersion" key of the JSON text in buf[0, len) into out.
 * Tolerates whitespace and text cut short or malformed after it; looks at nothing past len.
 * Keeps out unchanged (the fallback) when there is no readable version. Same scan as
 * requestedCniVersion() in core/cni.ts.
 */
static void find_cni_version(const char *buf, size_t len, char *out) {
  static const char key[] = "cniVersion";
  int depth = 0;
  for (size_t i = 0; i < len; i++) {
    char c = buf[i];
    if (c == '{' || c == '[') {
      depth++;
    } else if (c == '}' || c == ']') {
      depth--;
    } else if (c == '"') {
      long end = string_end(buf, len, i);
      if (end < 0) return;
      size_t key_len = (size_t)end - i - 1;
      int is_key = depth == 1 && key_len == sizeof key - 1 && memcmp(buf + i + 1, key, key_len) == 0;
      i = (size_t)end;
      if (!is_key) continue;
      size_t p = i + 1;
      while (p < len && json_space(buf[p])) p++;
      if (p >= len || buf[p] != ':') continue;
      p++;
      while (p < len && json_space(buf[p])) p++;
      if (p >= len || buf[p] != '"') continue;
      size_t from = ++p;
      while (p < len && p - from <= VERSION_MAX && version_char(buf[p])) p++;
      if (p >= len || buf[p] != '"' || p == from || p - from > VERSION_MAX) return;
      memcpy(out, buf + from, p - from);
      out[p - from] = 0;
      return;
    }
  }
}

int main(void) {
  const char *cmd = getenv("CNI_COMMAND");
  if (cmd && strcmp(cmd, "VERSION") == 0) {
    /* Answered without the daemon: VERSION must work even when netd is down. */
    fputs(VERSION_REPLY, stdout);
    return 0;
  }
  if (cmd && strcmp(cmd, "STATUS") == 0) error_code = CODE_PLUGIN_NOT_AVAILABLE;
  prepare_timeout_reply(0);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, on_alarm);
  alarm(TIMEOUT_SECONDS);

  /* The config's beginning, read first so that every error below answers in its cniVersion. */
  static char head[CONFIG_HEAD_SIZE];
  size_t head_len = 0;
  int stdin_done = 0;
  while (head_len < sizeof head) {
    ssize_t n = read(0, head + head_len, sizeof head - head_len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      stdin_done = 1;
      break;
    }
    head_len += (size_t)n;
  }
  find_cni_version(head, head_len, request_version);
  prepare_timeout_reply(1);

  struct stat ns;
  if (stat("/proc/self/ns/net", &ns) != 0) fail("cannot read this process's network namespace");
  char dir[SOCKET_DIR_SIZE];
  const char *marker = "@@NETD_SOCKET_DIR@@";
  size_t skip = strlen(marker);
  size_t i = 0;
  for (; i + skip < SOCKET_DIR_SIZE - 1 && SOCKET_DIR[i + skip]; i++) dir[i] = SOCKET_DIR[i + skip];
  dir[i] = 0;

  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  int len = snprintf(addr.sun_path, sizeof addr.sun_path, "%s/net-%llu.sock", dir, (unsigned long long)ns.st_ino);
  if (len < 0 || (size_t)len >= sizeof addr.sun_path) fail("netd socket path too long");

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("cannot create a socket");
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) fail("netd is not running on this host (its CNI socket does not answer)");

  /* The request: CNI_* variables, an empty line, stdin. */
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "CNI_", 4) != 0 || strchr(*e, '\n')) continue;
    if (write_all(fd, *e, strlen(*e)) || write_all(fd, "\n", 1)) fail("netd closed the connection");
  }
  if (write_all(fd, "\n", 1)) fail("netd closed the connection");
  /* A daemon that stops reading (request too large) still answers; keep draining stdin. */
  (void)write_all(fd, head, head_len);
  char buf[65536];
  while (!stdin_done) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    (void)write_all(fd, buf, (size_t)n);
  }
  shutdown(fd, SHUT_WR);

  /* The reply: "<status>\n<stdout>". */
  size_t cap = 65536, got = 0;
  char *reply = malloc(cap);
  if (!reply) fail("out of memory");
  for (;;) {
    if (got == cap) {
      if (cap >= REPLY_LIMIT) fail("netd's reply is too large");
      cap *= 2;
      reply = realloc(reply, cap);
      if (!reply) fail("out of memory");
    }
    ssize_t n = read(fd, reply + got, cap - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("netd did not answer");
    if (n == 0) break;
    got += (size_t)n;
  }
  char *nl = memchr(reply, '\n', got);
  if (!nl || nl == reply || nl - reply > 3) fail("netd gave no answer");
  int status = 0;
  for (char *p = reply; p < nl; p++) {
    if (*p < '0' || *p > '9') fail("netd gave no answer");
    status = status * 10 + (*p - '0');
  }
  if (status > 1) fail("netd gave no answer");
  size_t body = got - (size_t)(nl + 1 - reply);
  if (write_all(1, nl + 1, body)) return 1;
  return status;
}
