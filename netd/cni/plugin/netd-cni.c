/*
 * netd CNI plugin: a thin client of the host's netd daemon.
 *
 * Why C and not Node or sh: a runtime starts the plugin for every ADD and DEL. Node's start-up
 * (~120 ms here) and even POSIX sh + socat (~8 ms: six execs) would dwarf the work the daemon
 * does. This program execs nothing: ~1 ms. It knows no CNI semantics; the daemon does all of it
 * (docs/decisions/0008-native-cni-shim.md).
 *
 * It connects to <socket dir>/net-<inode of its own network namespace>.sock, so it always reaches
 * the daemon of the host whose namespace it runs in (also when virtual hosts share a filesystem).
 * Request: the CNI_* environment as KEY=VALUE lines, an empty line, then stdin until EOF.
 * Reply: the exit status on the first line, then what to print on stdout.
 *
 * The socket directory is patched into SOCKET_DIR by `netd install-cni` (see install-cni.ts):
 * the marker below is followed by zero bytes up to SOCKET_DIR_SIZE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
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

extern char **environ;

/* volatile: the compiler must not fold the patched bytes into constants. */
static volatile const char SOCKET_DIR[SOCKET_DIR_SIZE] = "@@NETD_SOCKET_DIR@@/run/netd";

static const char VERSION_REPLY[] =
    "{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n";

/* A CNI error on stdout (code 11: try again later) and exit status 1. */
static void fail(const char *msg) {
  printf("{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"%s\"}\n", msg);
  fflush(stdout);
  exit(1);
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
  static const char msg[] = "{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"netd did not answer in time\"}\n";
  (void)!write(1, msg, sizeof msg - 1);
  _exit(1);
}

int main(void) {
  const char *cmd = getenv("CNI_COMMAND");
  if (cmd && strcmp(cmd, "VERSION") == 0) {
    /* Answered without the daemon: VERSION must work even when netd is down. */
    fputs(VERSION_REPLY, stdout);
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, on_alarm);
  alarm(TIMEOUT_SECONDS);

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
  char buf[65536];
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    /* A daemon that stops reading (request too large) still answers; keep draining stdin. */
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
