/*
 * netd-spawner: starts commands on behalf of a Node process, so that Node does not fork itself.
 *
 * Why: Node's child_process.spawn forks the whole process synchronously on the event loop, and a
 * fork costs in proportion to the parent's memory (page tables): ~1.4 ms at 50 MiB, ~5 ms at
 * 150 MiB on this machine, with a core busy meanwhile. netd runs ip/tc/nft thousands of times
 * under churn. This helper stays a few hundred KiB and starts children with posix_spawn
 * (vfork-like: no page-table copy), many at once, and reports each one's exit status and output.
 * See docs/decisions/0009-spawner.md.
 *
 * Protocol on stdin/stdout, little-endian u32 fields, one frame per message:
 *   request  run:  len, op=1, id, timeout_ms, argc, argc x (len, bytes), envc, envc x (len, "K=V"),
 *                  stdin (len, bytes)
 *   request  kill: len, op=2, id
 *   reply:         len, id, status, timed_out, stdout (len, bytes), stderr (len, bytes)
 * `len` counts the bytes after itself. status: the exit code (>= 0), -signal when killed, or
 * -(1000 + errno) when the command could not be started (e.g. -1002 for ENOENT).
 * The helper exits when its stdin closes, and dies with its parent (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN 256
#define MAX_FRAME (64u * 1024 * 1024)
#define MAX_OUTPUT (64u * 1024 * 1024)

extern char **environ;

struct buf {
  char *data;
  size_t len, cap;
};

struct child {
  int used;
  uint32_t id;
  pid_t pid;
  int pidfd, in_fd, out_fd, err_fd;
  struct buf in, out, err;
  size_t in_off;
  int exited, status, timed_out;
  int64_t deadline_ms;
};

static struct child children[MAX_CHILDREN];
static struct buf requests;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void buf_append(struct buf *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) die("realloc");
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, n);
  b->len += n;
}

static void buf_free(struct buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t get_u32(const char *p) {
  return (uint32_t)(unsigned char)p[0] | (uint32_t)(unsigned char)p[1] << 8 | (uint32_t)(unsigned char)p[2] << 16 |
         (uint32_t)(unsigned char)p[3] << 24;
}

static void put_u32(struct buf *b, uint32_t v) {
  unsigned char x[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >> 24) & 0xff};
  buf_append(b, x, 4);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      exit(0); /* the parent is gone */
    }
    p += w;
    n -= (size_t)w;
  }
}

static void reply(uint32_t id, int32_t status, int timed_out, const struct buf *out, const struct buf *err) {
  struct buf r = {0};
  uint32_t len = 4 * 5 + (uint32_t)out->len + (uint32_t)err->len;
  put_u32(&r, len);
  put_u32(&r, id);
  put_u32(&r, (uint32_t)status);
  put_u32(&r, (uint32_t)timed_out);
  put_u32(&r, (uint32_t)out->len);
  if (out->len) buf_append(&r, out->data, out->len);
  put_u32(&r, (uint32_t)err->len);
  if (err->len) buf_append(&r, err->data, err->len);
  write_all(1, r.data, r.len);
  buf_free(&r);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* A reader of a frame that never reads past its end. */
struct cursor {
  const char *p;
  uint32_t left;
  int bad;
};

static uint32_t take_u32(struct cursor *c) {
  if (c->left < 4) {
    c->bad = 1;
    return 0;
  }
  uint32_t v = get_u32(c->p);
  c->p += 4;
  c->left -= 4;
  return v;
}

/* A length-prefixed string, copied and NUL-terminated. */
static char *take_str(struct cursor *c, uint32_t *len_out) {
  uint32_t n = take_u32(c);
  if (c->bad || n > c->left) {
    c->bad = 1;
    return NULL;
  }
  char *s = malloc((size_t)n + 1);
  if (!s) die("malloc");
  memcpy(s, c->p, n);
  s[n] = 0;
  c->p += n;
  c->left -= n;
  if (len_out) *len_out = n;
  return s;
}

/* The child's environment: ours, with each of `extra` (K=V) added or replacing ours. */
static char **child_env(char **extra, uint32_t n) {
  size_t ours = 0;
  while (environ[ours]) ours++;
  char **env = calloc(ours + n + 1, sizeof(char *));
  if (!env) die("calloc");
  size_t k = 0;
  for (size_t i = 0; i < ours; i++) {
    const char *eq = strchr(environ[i], '=');
    size_t key = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
    int replaced = 0;
    for (uint32_t j = 0; j < n && !replaced; j++) replaced = strncmp(extra[j], environ[i], key) == 0 && extra[j][key] == '=';
    if (!replaced) env[k++] = environ[i];
  }
  for (uint32_t j = 0; j < n; j++) env[k++] = extra[j];
  env[k] = NULL;
  return env;
}

static void start(const char *frame, uint32_t len) {
  struct cursor c = {frame, len, 0};
  take_u32(&c); /* op */
  uint32_t id = take_u32(&c);
  uint32_t timeout_ms = take_u32(&c);
  uint32_t argc = take_u32(&c);
  if (c.bad || argc == 0 || argc > 100000) {
    struct buf none = {0}, msg = {0};
    buf_append(&msg, "netd-spawner: bad request", 25);
    reply(id, -(1000 + EINVAL), 0, &none, &msg);
    buf_free(&msg);
    return;
  }
  char **argv = calloc(argc + 1, sizeof(char *));
  if (!argv) die("calloc");
  for (uint32_t i = 0; i < argc; i++) argv[i] = take_str(&c, NULL);
  uint32_t envc = take_u32(&c);
  if (envc > 100000) c.bad = 1;
  char **extra = calloc((c.bad ? 0 : envc) + 1, sizeof(char *));
  if (!extra) die("calloc");
  for (uint32_t i = 0; !c.bad && i < envc; i++) extra[i] = take_str(&c, NULL);
  uint32_t in_len = 0;
  char *in = c.bad ? NULL : take_str(&c, &in_len);

  struct child *ch = NULL;
  for (int i = 0; i < MAX_CHILDREN && !ch; i++)
    if (!children[i].used) ch = &children[i];

  int err = c.bad ? EINVAL : ch ? 0 : EAGAIN;
  int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1};
  pid_t pid = -1;
  if (!err && (pipe2(in_p, O_CLOEXEC) || pipe2(out_p, O_CLOEXEC) || pipe2(err_p, O_CLOEXEC))) err = errno;
  if (!err) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_p[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out_p[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err_p[1], 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    char **env = child_env(extra, envc);
    err = posix_spawnp(&pid, argv[0], &fa, &attr, argv, env);
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
  }
  close_fd(&in_p[0]);
  close_fd(&out_p[1]);
  close_fd(&err_p[1]);
  if (err) {
    close_fd(&in_p[1]);
    close_fd(&out_p[0]);
    close_fd(&err_p[0]);
    struct buf none = {0}, msg = {0};
    char text[256];
    int n = snprintf(text, sizeof text, "%s: %s", argv[0] ? argv[0] : "?", strerror(err));
    buf_append(&msg, text, (size_t)n);
    reply(id, -(1000 + err), 0, &none, &msg);
    buf_free(&msg);
  } else {
    memset(ch, 0, sizeof *ch);
    ch->used = 1;
    ch->id = id;
    ch->pid = pid;
    ch->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (ch->pidfd < 0) die("pidfd_open");
    ch->in_fd = in_p[1];
    ch->out_fd = out_p[0];
    ch->err_fd = err_p[0];
    fcntl(ch->in_fd, F_SETFL, O_NONBLOCK);
    if (in_len) buf_append(&ch->in, in, in_len);
    if (ch->in.len == 0) close_fd(&ch->in_fd);
    ch->deadline_ms = timeout_ms ? now_ms() + timeout_ms : 0;
  }
  for (uint32_t i = 0; i < argc; i++) free(argv[i]);
  free(argv);
  for (uint32_t i = 0; i < envc && extra[i]; i++) free(extra[i]);
  free(extra);
  free(in);
}

static void kill_child(uint32_t id) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i].used && children[i].id == id && !children[i].exited) kill(children[i].pid, SIGKILL);
}

/* Handles every complete frame in `requests`. */
static void handle_requests(void) {
  size_t off = 0;
  while (requests.len - off >= 4) {
    uint32_t len = get_u32(requests.data + off);
    if (len > MAX_FRAME || len < 8) {
      fprintf(stderr, "netd-spawner: bad frame length %u\n", len);
      exit(1);
    }
    if (requests.len - off - 4 < len) break;
    const char *frame = requests.data + off + 4;
    uint32_t op = get_u32(frame);
    if (op == 1) start(frame, len);
    else if (op == 2) kill_child(get_u32(frame + 4));
    off += 4 + (size_t)len;
  }
  memmove(requests.data, requests.data + off, requests.len - off);
  requests.len -= off;
}

/* Reads what is there; closes at EOF. An output past the limit kills the child. */
static void drain(struct child *ch, int *fd, struct buf *into) {
  char tmp[65536];
  ssize_t n = read(*fd, tmp, sizeof tmp);
  if (n > 0) {
    if (ch->out.len + ch->err.len + (size_t)n > MAX_OUTPUT) kill(ch->pid, SIGKILL);
    else buf_append(into, tmp, (size_t)n);
  } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
    close_fd(fd);
  }
}

static void finish_if_done(struct child *ch) {
  if (!ch->exited || ch->out_fd >= 0 || ch->err_fd >= 0) return;
  close_fd(&ch->in_fd);
  close_fd(&ch->pidfd);
  reply(ch->id, ch->status, ch->timed_out, &ch->out, &ch->err);
  buf_free(&ch->in);
  buf_free(&ch->out);
  buf_free(&ch->err);
  ch->used = 0;
}

int main(void) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 0;
  signal(SIGPIPE, SIG_IGN);
  struct pollfd fds[1 + MAX_CHILDREN * 4];
  struct child *owner[1 + MAX_CHILDREN * 4];
  int kind[1 + MAX_CHILDREN * 4];
  int open_in = 1;
  for (;;) {
    int n = 0;
    int64_t now = now_ms(), wait = -1;
    if (open_in) fds[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
    for (int i = 0; i < MAX_CHILDREN; i++) {
      struct child *ch = &children[i];
      if (!ch->used) continue;
      if (ch->deadline_ms && !ch->exited) {
        if (now >= ch->deadline_ms) {
          ch->timed_out = 1;
          kill(ch->pid, SIGKILL);
          ch->deadline_ms = 0;
        } else if (wait < 0 || ch->deadline_ms - now < wait) {
          wait = ch->deadline_ms - now;
        }
      }
      if (ch->in_fd >= 0) owner[n] = ch, kind[n] = 0, fds[n++] = (struct pollfd){.fd = ch->in_fd, .events = POLLOUT};
      if (ch->out_fd >= 0) owner[n] = ch, kind[n] = 1, fds[n++] = (struct pollfd){.fd = ch->out_fd, .events = POLLIN};
      if (ch->err_fd >= 0) owner[n] = ch, kind[n] = 2, fds[n++] = (struct pollfd){.fd = ch->err_fd, .events = POLLIN};
      if (!ch->exited) owner[n] = ch, kind[n] = 3, fds[n++] = (struct pollfd){.fd = ch->pidfd, .events = POLLIN};
    }
    if (!open_in && n == 0) return 0;
    if (poll(fds, (nfds_t)n, (int)wait) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    for (int i = 0; i < n; i++) {
      if (!fds[i].revents) continue;
      if (open_in && i == 0) {
        char tmp[65536];
        ssize_t r = read(0, tmp, sizeof tmp);
        if (r > 0) {
          buf_append(&requests, tmp, (size_t)r);
          handle_requests();
        } else if (r == 0 || errno != EINTR) {
          open_in = 0; /* the parent is gone: finish what runs, then exit */
        }
        continue;
      }
      struct child *ch = owner[i];
      if (!ch->used) continue;
      if (kind[i] == 0) {
        ssize_t w = write(ch->in_fd, ch->in.data + ch->in_off, ch->in.len - ch->in_off);
        if (w > 0) ch->in_off += (size_t)w;
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || ch->in_off >= ch->in.len) close_fd(&ch->in_fd);
      } else if (kind[i] == 1) {
        drain(ch, &ch->out_fd, &ch->out);
      } else if (kind[i] == 2) {
        drain(ch, &ch->err_fd, &ch->err);
      } else {
        int st = 0;
        if (waitpid(ch->pid, &st, WNOHANG) == ch->pid) {
          ch->exited = 1;
          ch->status = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
          /* A child's own children may hold its pipes open; do not wait for them. */
          close_fd(&ch->in_fd);
        }
      }
      finish_if_done(ch);
    }
  }
}
