/* The escape suite's attacker (tests/escape.rs): a static program pushed into a container and run
 * there as its root. Each attempt prints one line:
 *
 *   <name> DENIED <why>      the attempt failed (the errno, or what stopped it)
 *   <name> ESCAPED <what>    the attempt worked: a hole
 *   <name> INFO <text>       facts the test checks on the host side
 *
 * Attempts that write to host-global state write the value the host already has (passed in by the
 * test), so a hole is seen by the call succeeding, never by damage done.
 *
 * Modes:
 *   probe all MONITOR_PID DAEMON_PID DISK_MAJ DISK_MIN PANIC CORE_PATTERN SYS_KERNEL_FILE VALUE
 *   probe exe-overwrite NAME SECONDS  try to write through the /proc/PID/exe of every bivy binary
 *                                     seen in the container (CVE-2019-5736)
 *   probe keyring                     the session keyring, and whether the host's secret is in it
 *   probe session-exec CMD...         (host side) join a session keyring holding a secret, exec CMD
 *   probe fds PID...                  every open fd of each PID and where it points
 *   probe keyring-id                  the serial of this process's session keyring (host side)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <stddef.h>
#include <unistd.h>

static void denied(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void escaped(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#include <stdarg.h>
static void line(const char *name, const char *what, const char *fmt, va_list ap) {
    printf("%s %s ", name, what);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
}
static void denied(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    line(name, "DENIED", fmt, ap);
    va_end(ap);
}
static void escaped(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    line(name, "ESCAPED", fmt, ap);
    va_end(ap);
}
static void info(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    line(name, "INFO", fmt, ap);
    va_end(ap);
}

/* A syscall result: DENIED with its errno when it failed, else ESCAPED with `what`. */
static void expect_fail(const char *name, long rc, const char *what) {
    if (rc < 0)
        denied(name, "%s", strerror(errno));
    else
        escaped(name, "%s (returned %ld)", what, rc);
}

static const char *MNT = "/tmp/bivy-escape-mnt";

static void try_mount(const char *name, const char *fstype, const char *data) {
    mkdir(MNT, 0700);
    if (mount(fstype, MNT, fstype, 0, data) < 0) {
        denied(name, "mount -t %s: %s", fstype, strerror(errno));
        return;
    }
    escaped(name, "mounted %s on %s", fstype, MNT);
    umount2(MNT, MNT_DETACH);
}

/* Write `value` to `path`: DENIED when open or write fails. */
static void try_write(const char *name, const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        denied(name, "open %s: %s", path, strerror(errno));
        return;
    }
    ssize_t n = write(fd, value, strlen(value));
    int err = errno;
    close(fd);
    if (n < 0)
        denied(name, "write %s: %s", path, strerror(err));
    else
        escaped(name, "wrote %zd bytes to %s", n, path);
}

/* Read from `path`: DENIED when it cannot be opened or reads nothing (a mask). */
static void try_read(const char *name, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        denied(name, "open %s: %s", path, strerror(errno));
        return;
    }
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf);
    int err = errno;
    close(fd);
    if (n < 0)
        denied(name, "read %s: %s", path, strerror(err));
    else if (n == 0)
        denied(name, "%s reads as empty (masked)", path);
    else
        escaped(name, "read %zd bytes from %s", n, path);
}

/* Make a device node at `path` and read it. */
static void try_mknod(const char *name, const char *path, mode_t type, unsigned maj, unsigned min) {
    unlink(path);
    if (mknod(path, type | 0600, makedev(maj, min)) < 0) {
        denied(name, "mknod %s %u:%u: %s", path, maj, min, strerror(errno));
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    int err = errno;
    if (fd < 0) {
        unlink(path);
        denied(name, "mknod %s worked but open: %s", path, strerror(err));
        return;
    }
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    unlink(path);
    if (n > 0)
        escaped(name, "read %zd bytes from device %u:%u", n, maj, min);
    else
        denied(name, "mknod %s worked but read: %s", path, n < 0 ? strerror(errno) : "nothing");
}

/* Does `dir` list an entry named `entry`? */
static int has_entry(const char *dir, const char *entry) {
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, entry);
    return lstat(p, &st) == 0;
}

/* Mount a cgroup filesystem the kernel allows in a cgroup namespace: it must be rooted at the
 * container's own cgroup, the directory its /sys/fs/cgroup view (`view`) shows (same inode), with
 * no release_agent. */
static void try_cgroup_mount(const char *name, const char *fstype, const char *data, const char *view) {
    mkdir(MNT, 0700);
    if (mount("cgroup", MNT, fstype, 0, data) < 0) {
        denied(name, "mount -t %s -o %s: %s", fstype, data ? data : "", strerror(errno));
        return;
    }
    struct stat m, v;
    int have_view = stat(view, &v) == 0 && stat(MNT, &m) == 0 && m.st_dev == v.st_dev;
    if (has_entry(MNT, "release_agent"))
        escaped(name, "the hierarchy's root, with release_agent, is visible");
    else if (have_view && m.st_ino != v.st_ino)
        escaped(name, "rooted elsewhere than the container's cgroup (%s)", view);
    else if (!have_view && has_entry(MNT, "bivy"))
        escaped(name, "the host's cgroup tree is visible (a `bivy` directory in %s)", MNT);
    else
        denied(name, "mounted, but rooted at the container's cgroup (%s)",
               have_view ? view : "no host tree");
    umount2(MNT, MNT_DETACH);
}

/* Every v1 hierarchy of the container's /sys/fs/cgroup: release_agent and notify_on_release. */
static void try_cgroup_files(void) {
    DIR *d = opendir("/sys/fs/cgroup");
    if (!d) {
        denied("cgroup_v1_release_agent", "no /sys/fs/cgroup: %s", strerror(errno));
        return;
    }
    struct dirent *e;
    int agents = 0, notifies = 0;
    char p[512];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s/release_agent", e->d_name);
        int fd = open(p, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = write(fd, "/bivy-escape-agent", 18);
            close(fd);
            if (n >= 0) {
                escaped("cgroup_v1_release_agent", "wrote %s", p);
                agents = -1000;
            }
        }
        agents++;
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s/notify_on_release", e->d_name);
        struct stat st;
        if (stat(p, &st) == 0) {
            fd = open(p, O_WRONLY | O_CLOEXEC);
            if (fd >= 0) {
                ssize_t n = write(fd, "1", 1);
                close(fd);
                if (n >= 0) {
                    escaped("cgroup_v1_notify_on_release", "wrote %s", p);
                    notifies = -1000;
                }
            }
            notifies++;
        }
    }
    closedir(d);
    if (agents > 0)
        denied("cgroup_v1_release_agent", "no release_agent writable in %d hierarchies", agents);
    if (notifies > 0)
        denied("cgroup_v1_notify_on_release",
               "no notify_on_release of the container's cgroup writable (%d hierarchies)", notifies);
    else if (notifies == 0)
        info("cgroup_v1_notify_on_release", "no v1 hierarchy");
}

/* Enter a private mount namespace and try to take bivy's masks away there: umount the read-only
 * binds over /proc/sys and /proc/sysrq-trigger and the /dev/null over /proc/kcore, remount /sys
 * read-write. bivy locks them, so this should take nothing off; whatever it does take off, the
 * kernel's own checks on host-global files must still stop what follows. */
static int unmask(void) {
    if (unshare(CLONE_NEWNS) < 0) {
        printf("unmask INFO unshare(CLONE_NEWNS): %s\n", strerror(errno));
        return -1;
    }
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    const char *masks[] = {"/proc/sys", "/proc/sysrq-trigger", "/proc/kcore"};
    for (unsigned i = 0; i < sizeof masks / sizeof *masks; i++) {
        int n = 0;
        while (umount2(masks[i], MNT_DETACH) == 0)
            n++;
        info("unmask", "%s: %d mounts taken off", masks[i], n);
    }
    /* Both the superblock (sysfs was mounted read-only) and the mount. */
    int sb = mount(NULL, "/sys", NULL, MS_REMOUNT, NULL);
    int sb_err = errno;
    int mnt = mount(NULL, "/sys", NULL, MS_REMOUNT | MS_BIND, NULL);
    info("unmask", "/sys superblock read-write: %s; mount read-write: %s",
         sb ? strerror(sb_err) : "done", mnt ? strerror(errno) : "done");
    return 0;
}

static void host_global_writes(const char *sfx, const char *panic, const char *core,
                               const char *sysk, const char *sysv) {
    char n[128];
    snprintf(n, sizeof n, "write_proc_sys_kernel_panic%s", sfx);
    try_write(n, "/proc/sys/kernel/panic", panic);
    snprintf(n, sizeof n, "write_proc_sys_kernel_core_pattern%s", sfx);
    try_write(n, "/proc/sys/kernel/core_pattern", core);
    snprintf(n, sizeof n, "write_proc_sys_vm_drop_caches%s", sfx);
    try_write(n, "/proc/sys/vm/drop_caches", "1");
    snprintf(n, sizeof n, "write_proc_sysrq_trigger%s", sfx);
    try_write(n, "/proc/sysrq-trigger", "h");
    snprintf(n, sizeof n, "write_sys_kernel%s", sfx);
    try_write(n, sysk, sysv);
    snprintf(n, sizeof n, "read_proc_kcore%s", sfx);
    try_read(n, "/proc/kcore");
}

/* Keyrings: the session keyring is the container's own, and the host's secret is not in it. */
static void keyring_check(void) {
    long ses = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    char desc[256] = "";
    if (ses >= 0)
        syscall(SYS_keyctl, KEYCTL_DESCRIBE, ses, desc, sizeof desc - 1);
    long found = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user",
                         "bivy-escape-host-secret", 0);
    info("keyring", "session %ld %s", ses, desc);
    if (found >= 0)
        escaped("keyring_host_secret", "found the host's key %ld in the session keyring", found);
    else
        denied("keyring_host_secret", "the host's key is not reachable: %s", strerror(errno));
}

static void all(int argc, char **argv) {
    if (argc < 10) {
        fprintf(stderr, "usage: probe all MONITOR_PID DAEMON_PID DISK_MAJ DISK_MIN PANIC CORE_PATTERN SYS_KERNEL_FILE VALUE\n");
        exit(2);
    }
    pid_t monitor = atoi(argv[2]), daemon = atoi(argv[3]);
    unsigned maj = atoi(argv[4]), min = atoi(argv[5]);
    const char *panic = argv[6], *core = argv[7], *sysk = argv[8], *sysv = argv[9];
    mkdir("/tmp", 01777);

    /* Mounts. */
    try_mount("mount_proc", "proc", NULL);
    try_mount("mount_sysfs", "sysfs", NULL);
    try_mount("mount_debugfs", "debugfs", NULL);
    try_mount("mount_securityfs", "securityfs", NULL);
    try_mount("mount_tracefs", "tracefs", NULL);
    {
        mkdir(MNT, 0700);
        if (mount("cgroup", MNT, "cgroup", 0, "none,name=bivyescape") < 0)
            denied("mount_cgroup_v1_new_hierarchy", "%s", strerror(errno));
        else {
            escaped("mount_cgroup_v1_new_hierarchy", "made a new v1 hierarchy (its release_agent is %s)",
                    has_entry(MNT, "release_agent") ? "there" : "absent");
            umount2(MNT, MNT_DETACH);
        }
        if (mount("cgroup", MNT, "cgroup", 0, "memory,release_agent=/bivy-escape-agent") < 0)
            denied("mount_cgroup_v1_release_agent_option", "%s", strerror(errno));
        else {
            escaped("mount_cgroup_v1_release_agent_option", "mounted with release_agent=");
            umount2(MNT, MNT_DETACH);
        }
    }
    try_cgroup_mount("mount_cgroup_v1", "cgroup", "memory", "/sys/fs/cgroup/memory");
    {
        struct statfs f;
        int pure_v2 = statfs("/sys/fs/cgroup", &f) == 0 && f.f_type == 0x63677270 /* CGROUP2 */;
        try_cgroup_mount("mount_cgroup2", "cgroup2", NULL,
                         pure_v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/unified");
    }
    try_cgroup_files();

    /* Kernel log, memory, devices. */
    {
        char buf[256];
        expect_fail("syslog_read_all", syscall(SYS_syslog, 3 /* READ_ALL */, buf, sizeof buf),
                    "read the kernel log");
    }
    try_read("read_dev_kmsg", "/dev/kmsg");
    try_read("read_dev_mem", "/dev/mem");
    try_mknod("mknod_dev_mem", "/dev/bivy-escape-mem", S_IFCHR, 1, 1);
    try_mknod("mknod_dev_kmsg", "/dev/bivy-escape-kmsg", S_IFCHR, 1, 11);
    try_mknod("mknod_host_root_disk_in_dev", "/dev/bivy-escape-disk", S_IFBLK, maj, min);
    try_mknod("mknod_host_root_disk_in_rootfs", "/root/bivy-escape-disk", S_IFBLK, maj, min);
    {
        /* Any block device at all under /dev. */
        DIR *d = opendir("/dev");
        struct dirent *e;
        int blocks = 0;
        char p[300];
        while (d && (e = readdir(d))) {
            struct stat st;
            snprintf(p, sizeof p, "/dev/%s", e->d_name);
            if (lstat(p, &st) == 0 && S_ISBLK(st.st_mode)) {
                blocks++;
                try_read("open_block_device_in_dev", p);
            }
        }
        if (d)
            closedir(d);
        if (!blocks)
            denied("open_block_device_in_dev", "no block device in /dev");
    }

    /* Syscalls. */
    {
        int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        /* The shocker exploit's handle: ext4's root inode (2), generation 0. */
        struct {
            struct file_handle fh;
            unsigned char bytes[8];
        } h = {{8, 1}, {2, 0, 0, 0, 0, 0, 0, 0}};
        expect_fail("open_by_handle_at", syscall(SYS_open_by_handle_at, root, &h.fh, O_RDONLY),
                    "opened a file by handle");
        close(root);
    }
    {
        union bpf_attr a;
        memset(&a, 0, sizeof a);
        a.map_type = BPF_MAP_TYPE_ARRAY;
        a.key_size = 4;
        a.value_size = 4;
        a.max_entries = 1;
        expect_fail("bpf_map_create", syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a), "made a BPF map");
    }
    {
        struct perf_event_attr a;
        memset(&a, 0, sizeof a);
        a.size = sizeof a;
        a.type = PERF_TYPE_SOFTWARE;
        a.config = PERF_COUNT_SW_CPU_CLOCK;
        a.disabled = 1;
        expect_fail("perf_event_open_cpu_wide", syscall(SYS_perf_event_open, &a, -1, 0, -1, 0),
                    "opened a CPU-wide perf event");
        a.type = PERF_TYPE_HARDWARE;
        a.config = PERF_COUNT_HW_INSTRUCTIONS;
        a.exclude_kernel = 0;
        long rc = syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
        if (rc < 0 && errno != EACCES && errno != EPERM) {
            /* No hardware counters in a VM: ask for a kernel tracepoint instead. */
            a.type = PERF_TYPE_SOFTWARE;
            a.config = PERF_COUNT_SW_CPU_CLOCK;
            rc = syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
        }
        expect_fail("perf_event_open_kernel_profiling", rc, "profiles the kernel");
    }
    expect_fail("userfaultfd_kernel_faults", syscall(SYS_userfaultfd, O_CLOEXEC),
                "a userfaultfd that handles kernel faults");
    keyring_check();
    {
        pid_t targets[] = {monitor, daemon};
        const char *names[] = {"ptrace_monitor", "ptrace_daemon"};
        for (int i = 0; i < 2; i++) {
            long rc = ptrace(PTRACE_ATTACH, targets[i], 0, 0);
            if (rc == 0) {
                char p[64], comm[64] = "?";
                snprintf(p, sizeof p, "/proc/%d/comm", targets[i]);
                FILE *f = fopen(p, "r");
                if (f) {
                    if (!fgets(comm, sizeof comm, f))
                        strcpy(comm, "?");
                    fclose(f);
                }
                ptrace(PTRACE_DETACH, targets[i], 0, 0);
                escaped(names[i], "attached to pid %d (%s)", targets[i], comm);
            } else
                denied(names[i], "pid %d: %s", targets[i], strerror(errno));
        }
        /* Every process this namespace shows, for the host to compare. */
        DIR *d = opendir("/proc");
        struct dirent *e;
        printf("pids INFO");
        while (d && (e = readdir(d)))
            if (e->d_name[0] >= '1' && e->d_name[0] <= '9')
                printf(" %s", e->d_name);
        printf("\n");
        if (d)
            closedir(d);
    }
    expect_fail("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0), "kexec_load");
    expect_fail("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0), "kexec_file_load");
    expect_fail("init_module", syscall(SYS_init_module, NULL, 0, ""), "init_module");
    expect_fail("finit_module", syscall(SYS_finit_module, -1, "", 0), "finit_module");
    expect_fail("delete_module", syscall(SYS_delete_module, "bivy_escape", 0), "delete_module");

    /* Host-global files, as mounted, then with bivy's masks taken off. */
    host_global_writes("", panic, core, sysk, sysv);
    {
        mkdir(MNT, 0700);
        if (mount("tmpfs", "/proc/sys", "tmpfs", 0, NULL) == 0) {
            info("mount_tmpfs_over_proc_sys", "mounted (hides the container's own view only)");
            umount2("/proc/sys", MNT_DETACH);
        } else
            info("mount_tmpfs_over_proc_sys", "%s", strerror(errno));
    }
    pid_t child = fork();
    if (child == 0) {
        if (unmask() == 0)
            host_global_writes("_unmasked", panic, core, sysk, sysv);
        fflush(stdout);
        _exit(0);
    }
    waitpid(child, NULL, 0);
    rmdir(MNT);
    printf("END\n");
}

static int exe_opens; /* opens of a bivy binary for writing that worked (the write then failed) */
static int exe_open_errno; /* why the last one that did not work did not */
static int held[64], n_held; /* O_PATH fds of the binaries seen */

/* The O_PATH route of CVE-2019-5736: once the runtime has exited, its binary is no longer
 * busy; reopen every binary seen through /proc/self/fd for writing. */
static int write_held(const char *name) {
    int holes = 0;
    for (int i = 0; i < n_held; i++) {
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", held[i]);
        int fd = open(self, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            exe_open_errno = errno;
            continue;
        }
        exe_opens++;
        if (pwrite(fd, "\x7f", 1, 0) == 1) {
            escaped(name, "wrote through an O_PATH fd reopened after the process ended");
            holes++;
        } else
            exe_open_errno = errno;
        close(fd);
    }
    return holes;
}

/* Try to write through /proc/PID/exe (one byte, the one already there: harmless, but a write). */
static int write_exe(const char *name, pid_t pid, const char *target) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    int flags[] = {O_WRONLY, O_RDWR};
    int holes = 0;
    for (int i = 0; i < 2; i++) {
        int fd = open(path, flags[i] | O_CLOEXEC);
        if (fd < 0) {
            exe_open_errno = errno;
            continue;
        }
        exe_opens++;
        if (pwrite(fd, "\x7f", 1, 0) == 1) {
            escaped(name, "wrote through %s (%s)", path, target);
            holes++;
        }
        close(fd);
    }
    /* Kept for the O_PATH route: reopened for writing once the process is gone (the end). */
    if (n_held < (int)(sizeof held / sizeof *held)) {
        int op = open(path, O_PATH | O_CLOEXEC);
        if (op >= 0)
            held[n_held++] = op;
    }
    return holes;
}

/* CVE-2019-5736: the runtime's binary reached for writing through /proc/PID/exe. For SECONDS,
 * listen on the abstract socket NAME (a `#!/proc/self/exe __netcat` script run by `bivy exec`
 * would connect: the runtime running as a container process) and scan /proc for any process whose
 * exe is bivy's (an exec helper between fork and exec); try to write through each. */
static void exe_overwrite(const char *sockname, int seconds) {
    const char *name = "proc_exe_overwrite";
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(sockname);
    memcpy(a.sun_path + 1, sockname, len);
    if (bind(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + len) < 0 ||
        listen(s, 8) < 0) {
        printf("%s ERROR listen on @%s: %s\n", name, sockname, strerror(errno));
        exit(1);
    }
    printf("READY\n");
    fflush(stdout);
    int seen = 0, connected = 0, holes = 0, scans = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t self = getpid();
    do {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) {
            struct ucred cred;
            socklen_t cl = sizeof cred;
            if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
                connected++;
                holes += write_exe(name, cred.pid, "the netcat peer");
            }
            close(c);
        }
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            pid_t pid = atoi(e->d_name);
            if (pid <= 0 || pid == self)
                continue;
            char path[64], target[256];
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            ssize_t n = readlink(path, target, sizeof target - 1);
            if (n <= 0)
                continue;
            target[n] = 0;
            if (strstr(target, "bivy")) {
                seen++;
                holes += write_exe(name, pid, target);
            }
        }
        if (d)
            closedir(d);
        scans++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (t.tv_sec - t0.tv_sec < seconds);
    holes += write_held(name);
    info(name, "%d scans of /proc, %d sightings of bivy's binary, %d opened for writing (else: %s), "
         "%d netcat connections", scans, seen, exe_opens, strerror(exe_open_errno), connected);
    printf("sightings %d\n", seen);
    if (!holes)
        denied(name, "nothing written through /proc/PID/exe");
    printf("END\n");
}

static void fds(int argc, char **argv) {
    for (int i = 2; i < argc; i++) {
        char dir[64];
        snprintf(dir, sizeof dir, "/proc/%s/fd", argv[i]);
        DIR *d = opendir(dir);
        if (!d) {
            printf("fd %s ERROR %s\n", argv[i], strerror(errno));
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char p[320], t[512];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            ssize_t n = readlink(p, t, sizeof t - 1);
            t[n < 0 ? 0 : n] = 0;
            printf("fd %s %s %s\n", argv[i], e->d_name, t);
        }
        closedir(d);
    }
    printf("END\n");
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "all"))
        all(argc, argv);
    else if (argc == 4 && !strcmp(argv[1], "exe-overwrite"))
        exe_overwrite(argv[2], atoi(argv[3]));
    else if (argc == 2 && !strcmp(argv[1], "keyring")) {
        keyring_check();
        printf("END\n");
    }
    else if (argc >= 2 && !strcmp(argv[1], "fds"))
        fds(argc, argv);
    else if (argc >= 3 && !strcmp(argv[1], "session-exec")) {
        /* Host side: a session keyring of its own holding a secret, then exec the daemon. */
        long ring = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, "bivy-escape-host");
        long key = syscall(SYS_add_key, "user", "bivy-escape-host-secret", "s3cret", 6,
                           KEY_SPEC_SESSION_KEYRING);
        if (ring < 0 || key < 0) {
            fprintf(stderr, "probe session-exec: keyring %ld key %ld: %s\n", ring, key, strerror(errno));
            return 1;
        }
        execvp(argv[2], argv + 2);
        fprintf(stderr, "probe session-exec: exec %s: %s\n", argv[2], strerror(errno));
        return 1;
    } else if (argc == 2 && !strcmp(argv[1], "keyring-id"))
        printf("%ld\n", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    else {
        fprintf(stderr, "usage: probe all ... | exe-overwrite NAME | fds PID... | keyring-id\n");
        return 2;
    }
    return 0;
}
