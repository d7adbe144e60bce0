# bivy: AppArmor profile template for a container (rendered by src/runtime/apparmor.rs).
#
# Follows LXD's container profile (lxd/apparmor/instance_lxc.go): same naming, flags and rules.
# Placeholders: {{name}} (the quoted profile name), {{mount_rules}}, {{deny_proc_sys}},
# {{deny_sys}} (generated from data in apparmor.rs: "everything under a directory except these
# entries" cannot be written as one AppArmor glob), {{raw}} (raw.apparmor, always last).
# Lines between `{{if X}}` and `{{end}}` are kept only when X (nesting, unprivileged) holds.
# Lines starting with `# ` in the first column (this header) are template comments: the renderer
# drops them. Indented comments stay in the rendered profile; `#include` is an AppArmor directive.

#include <tunables/global>

profile {{name}} flags=(attach_disconnected,mediate_deleted) {
  ### Base
  # The container is root in its own world: every capability, socket, file and unmount, within
  # what the user namespace, seccomp and the rules below leave.
  capability,
  dbus,
  file,
  network,
  umount,

  # Remounting the root read-only would turn the host's rootfs read-only (privileged containers
  # share its superblock); deny quietly, systemd tries it at shutdown.
  deny mount options=(ro,remount) -> /,
  deny mount options=(ro,remount,silent) -> /,

  # Signals and ptrace only within the container (same profile), plus receiving from outside.
  signal (receive),
  signal peer=@{profile_name},
  ptrace (readby),
  ptrace (tracedby),
  ptrace peer=@{profile_name},

  ### Filesystems the container may mount
  # Pseudo filesystems a normal distro mounts at boot; the dangerous ones are mountable (so boot
  # does not fail) but their contents are denied.
  mount fstype=binfmt_misc -> /proc/sys/fs/binfmt_misc/,
  deny /proc/sys/fs/binfmt_misc/{,**} rwklx,
  mount fstype=configfs -> /sys/kernel/config/,
  deny /sys/kernel/config/{,**} rwklx,
  mount fstype=debugfs -> /sys/kernel/debug/,
  deny /sys/kernel/debug/{,**} rwklx,
  mount fstype=efivarfs -> /sys/firmware/efi/efivars/,
  deny /sys/firmware/efi/efivars/{,**} rwklx,
  mount fstype=tracefs -> /sys/kernel/tracing/,
  deny /sys/kernel/tracing/{,**} rwklx,
  mount fstype=fuse,
  mount fstype=fuse.*,
  mount fstype=fusectl -> /sys/fs/fuse/connections/,
  mount fstype=hugetlbfs,
  mount fstype=mqueue,
  mount fstype=proc -> /proc/,
  mount fstype=securityfs -> /sys/kernel/security/,
  mount fstype=sysfs -> /sys/,
  mount options=(rw,nosuid,nodev,noexec,remount) -> /sys/,
  mount fstype=ramfs,
  mount fstype=tmpfs,
  # cgroup namespaces (every supported kernel has them): systemd mounts its own cgroup view.
  mount options=(ro,nosuid,nodev,noexec,remount,strictatime) -> /sys/fs/cgroup/,
  mount fstype=cgroup -> /sys/fs/cgroup/**,
  mount fstype=cgroup2 -> /sys/fs/cgroup/**,

  # Mount propagation changes of / (systemd makes / shared at boot).
  mount options=(rw,slave) -> /,
  mount options=(rw,rslave) -> /,
  mount options=(rw,shared) -> /,
  mount options=(rw,rshared) -> /,
  mount options=(rw,private) -> /,
  mount options=(rw,rprivate) -> /,
  mount options=(rw,unbindable) -> /,
  mount options=(rw,runbindable) -> /,

  # Read-only bind remounts, bind/rbind and move of anything except /proc, /sys and /dev/.lxc
  # (rbind: also not / and /dev), so the container cannot uncover what they hide.
{{mount_rules}}

  ### Kernel interfaces
  # /proc: hardware and kernel memory are off limits, even for reading.
  deny /proc/bus/** wklx,
  deny /proc/kcore rwklx,
  deny /proc/sysrq-trigger rwklx,
  deny /proc/acpi/** rwklx,
  deny /proc/sys/fs/** wklx,
  # /proc/sys is global kernel state: no writes except the namespaced entries
  # (kernel/{domainname,hostname,msg*,sem*,shm*} and net/**).
{{deny_proc_sys}}
  # /sys: no writes except the network namespace's devices and the cgroup/bpf filesystems.
{{deny_sys}}
  # /sys/kernel/security: no AppArmor stacking, so nothing there is the container's.
  deny /sys/k*{,/**} wklx,

  # Unix sockets within the container, and receiving from anywhere.
  unix (receive),
  unix peer=(label=@{profile_name}),

{{if nesting}}
  ### security.nesting: the container runs its own containers.
  pivot_root,
  # Signals and ptrace into the nested containers (other profiles).
  ptrace,
  signal,
  # The hidden copies of proc and sys used to set up nested containers.
  deny /dev/.lxc/proc/** rw,
  deny /dev/.lxc/sys/** rw,
  mount fstype=proc -> /usr/lib/*/lxc/**,
  mount fstype=sysfs -> /usr/lib/*/lxc/**,
  # Nested container managers remount proc/sys with flags AppArmor cannot express: allow mounts.
  mount,
  change_profile -> {{name}},
{{end}}
{{if unprivileged}}
  ### Unprivileged container (user namespace): mounts cannot reach the host's, so allow what
  # container tooling (systemd's PrivateTmp, ProtectSystem, ...) needs.
  pivot_root,
  mount options=(rw,slave) -> **,
  mount options=(rw,rslave) -> **,
  mount options=(rw,shared) -> **,
  mount options=(rw,rshared) -> **,
  mount options=(rw,private) -> **,
  mount options=(rw,rprivate) -> **,
  mount options=(rw,unbindable) -> **,
  mount options=(rw,runbindable) -> **,
  mount options=(rw,bind) / -> /**,
  mount options=(rw,bind) /** -> /**,
  mount options=(rw,rbind) / -> /**,
  mount options=(rw,rbind) /** -> /**,
  mount options=(ro,remount,bind),
  mount options=(ro,remount,bind,nodev),
  mount options=(ro,remount,bind,nodev,nosuid),
  mount options=(ro,remount,bind,noexec),
  mount options=(ro,remount,bind,noexec,nodev),
  mount options=(ro,remount,bind,nosuid),
  mount options=(ro,remount,bind,nosuid,nodev),
  mount options=(ro,remount,bind,nosuid,noexec),
  mount options=(ro,remount,bind,nosuid,noexec,nodev),
  mount options=(ro,remount,bind,noatime),
  mount options=(ro,remount,bind,noatime,nodev),
  mount options=(ro,remount,bind,noatime,noexec),
  mount options=(ro,remount,bind,noatime,nosuid),
  mount options=(ro,remount,bind,noatime,noexec,nodev),
  mount options=(ro,remount,bind,noatime,nosuid,nodev),
  mount options=(ro,remount,bind,noatime,nosuid,noexec),
  mount options=(ro,remount,bind,noatime,nosuid,noexec,nodev),
  mount options=(ro,remount,bind,nosuid,noexec,strictatime),
  mount options=(ro,remount,nosuid,noexec,strictatime),
  mount options=(ro,remount) /,
  mount options=(ro,remount) /**,
{{end}}
{{raw}}
}
