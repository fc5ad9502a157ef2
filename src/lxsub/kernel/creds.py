"""Credentials as the instance sees them: root inside is not root on the host.

They live only in the provider: every pico process runs on the host as the
invoking host user whatever its uid says here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Linux capability numbers the provider checks itself.
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_IPC_LOCK = 14
CAP_IPC_OWNER = 15
CAP_MKNOD = 27
CAP_SYS_ADMIN = 21
CAP_SYS_CHROOT = 18
CAP_SYS_PTRACE = 19
CAP_SYS_RESOURCE = 24
CAP_SYS_NICE = 23
CAP_SYS_TIME = 25
CAP_SYS_BOOT = 22
CAP_SYS_PACCT = 20
CAP_SYS_TTY_CONFIG = 26
CAP_SYSLOG = 34
CAP_CHECKPOINT_RESTORE = 40

CAP_LINUX_IMMUTABLE = 9
CAP_MAC_OVERRIDE = 32
# capabilities(7): the ones a change of the filesystem user ID from 0 clears
# from the effective set (Linux's CAP_FS_MASK).
FS_CAPS = sum(1 << cap for cap in (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER,
                                   CAP_FSETID, CAP_LINUX_IMMUTABLE, CAP_MAC_OVERRIDE, CAP_MKNOD))
SECURE_NO_SETUID_FIXUP = 1 << 2     # linux/securebits.h

CAP_LAST = 40
ALL_CAPS = (1 << (CAP_LAST + 1)) - 1


@dataclass
class Creds:
    ruid: int = 0
    euid: int = 0
    suid: int = 0
    fsuid: int = 0
    rgid: int = 0
    egid: int = 0
    sgid: int = 0
    fsgid: int = 0
    groups: tuple[int, ...] = ()
    cap_effective: int = ALL_CAPS
    cap_permitted: int = ALL_CAPS
    cap_inheritable: int = 0
    keep_caps: bool = False      # prctl(2) PR_SET_KEEPCAPS; cleared by execve
    # The capability bounding set (prctl(2) PR_CAPBSET_READ/DROP): what an
    # execve may give; inherited by fork and kept across execve.
    cap_bset: int = ALL_CAPS
    # The ambient set (prctl(2) PR_CAP_AMBIENT): kept across execve of an
    # unprivileged program, always within permitted & inheritable.
    cap_ambient: int = 0
    # prctl(2) PR_SET_SECUREBITS, but SECURE_KEEP_CAPS, which is keep_caps.
    securebits: int = 0
    # keyrings(7): the thread, process and session keyrings and the
    # request_key(2) default destination, as Linux keeps them in struct cred
    # (kernel/keys.py: clone_creds, exec_creds).
    thread_keyring: object = None
    process_keyring: object = None
    session_keyring: object = None
    reqkey_default: int = 0

    @classmethod
    def for_user(cls, uid: int, gid: int, groups: tuple[int, ...] = ()) -> "Creds":
        caps = ALL_CAPS if uid == 0 else 0
        return cls(uid, uid, uid, uid, gid, gid, gid, gid, groups, caps, caps, 0)

    def copy(self) -> "Creds":
        return replace(self)

    def capable(self, cap: int) -> bool:
        return bool(self.cap_effective >> cap & 1)

    def may_ptrace_read(self, target: "Creds", dumpable: bool, realcreds: bool = False) -> bool:
        """Linux __ptrace_may_access for another process: the caller's
        fsuid/fsgid (its real ids with PTRACE_MODE_REALCREDS) equal all of
        the target's ids, the target is dumpable and its permitted
        capabilities are among the caller's (cap_ptrace_access_check: the
        caller's permitted set with REALCREDS, its effective one with
        FSCREDS); or CAP_SYS_PTRACE."""
        if self.capable(CAP_SYS_PTRACE):
            return True
        uid, gid = (self.ruid, self.rgid) if realcreds else (self.fsuid, self.fsgid)
        mine = self.cap_permitted if realcreds else self.cap_effective
        return bool(dumpable) and uid == target.ruid == target.euid == target.suid \
            and gid == target.rgid == target.egid == target.sgid \
            and not target.cap_permitted & ~mine

    def in_group(self, gid: int) -> bool:
        return gid == self.fsgid or gid in self.groups

    def after_uid_change(self, old_r: int, old_e: int, old_s: int) -> None:
        """The capability rules of setuid(2) for a root that becomes a user
        (Linux's cap_emulate_setxuid): with keep_caps (PR_SET_KEEPCAPS) the
        permitted set stays, the effective one is cleared all the same."""
        was_root = 0 in (old_r, old_e, old_s)
        if was_root and 0 not in (self.ruid, self.euid, self.suid):
            if not self.keep_caps:
                self.cap_permitted = self.cap_effective = 0
            self.cap_ambient = 0     # whatever keep_caps says
        if old_e == 0 and self.euid != 0:
            self.cap_effective = 0
        elif old_e != 0 and self.euid == 0:
            self.cap_effective = self.cap_permitted
        self.fsuid = self.euid

    def after_fsuid_change(self, old_fsuid: int) -> None:
        """setfsuid(2) (cap_task_fix_setuid, LSM_SETID_FS): from 0 to
        nonzero the file system capabilities leave the effective set; back
        to 0 they return from the permitted one; not with
        SECURE_NO_SETUID_FIXUP."""
        if self.securebits & SECURE_NO_SETUID_FIXUP:
            return
        if old_fsuid == 0 and self.fsuid != 0:
            self.cap_effective &= ~FS_CAPS
        elif old_fsuid != 0 and self.fsuid == 0:
            self.cap_effective |= FS_CAPS & self.cap_permitted

    def after_exec(self, file_uid: int | None, file_gid: int | None) -> bool:
        """The credentials execve(2) gives: `file_uid`/`file_gid` are the
        program's owner and group when its set-user-ID / set-group-ID bit
        counts (None otherwise). Returns whether the exec is secure
        (getauxval(AT_SECURE)): the ids changed or differ from the real ones.

        As Linux's bprm_fill_uid and cap_bprm_creds_from_file: the saved ids
        become the effective ones; without file capabilities, root (real or
        effective, after the change) gets the full permitted set and, when
        effective root, the effective set; anyone else loses them
        (capabilities(7), "Capabilities and execution of programs by root").
        """
        old_euid, old_egid = self.euid, self.egid
        self.keep_caps = False
        if file_uid is not None:
            self.euid = file_uid
        if file_gid is not None:
            self.egid = file_gid
        self.suid = self.fsuid = self.euid
        self.sgid = self.fsgid = self.egid
        changed = self.euid != old_euid or self.egid != old_egid
        if changed:
            self.cap_ambient = 0     # a set-id program cancels the ambient set
        if 0 in (self.ruid, self.euid):
            # handle_privileged_root: pP' = bset | pI (| pA')
            self.cap_permitted = self.cap_bset | self.cap_inheritable | self.cap_ambient
            self.cap_effective = self.cap_permitted if self.euid == 0 else self.cap_ambient
        else:
            # no file capabilities: pP' = pE' = pA'
            self.cap_permitted = self.cap_effective = self.cap_ambient
        return changed or self.euid != self.ruid or self.egid != self.rgid

def may_signal(sender: "Creds", target: "Creds") -> bool:
    """kernel/signal.c kill_ok_by_cred: the sender's real or effective uid
    is the target's real or saved uid, or the sender has CAP_KILL."""
    return (sender.euid in (target.suid, target.ruid) or sender.ruid in (target.suid, target.ruid)
            or sender.capable(CAP_KILL))
