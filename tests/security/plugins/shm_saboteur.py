"""A hostile actor that attacks the host's shared-memory tensor decoder.

It answers its own call with a hand-built REPLY frame whose payload holds a
tensor (extension type 10) or array (11) -- ``[dtype, shape, strides, offset,
fd_index, nbytes, requires_grad, device]`` -- and whose descriptors (SCM_RIGHTS)
are whatever the attack needs: unsealed or undersized memfds, pipes, files,
sockets, too few. Nothing in actorbox builds or checks these on the way out.
"""

from __future__ import annotations

import fcntl
import os
import socket

import actorbox
from actorbox._caller import current_call

from .saboteur import OK, REPLY, Ext, frame, pack, raw_call, send_body, send_with_fds

EXT_TENSOR, EXT_NDARRAY = 10, 11
F_SEAL_FUTURE_WRITE = 0x0010  # linux/fcntl.h; not exported by Python's fcntl
SEALED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


def memfd(nbytes, seals=SEALED, *, allow_sealing=True, content=b"", sparse=False):
    """A memfd of ``nbytes`` with ``content`` at its start and ``seals`` added; every page
    allocated (zeros after ``content``) unless ``sparse``."""
    fd = os.memfd_create("shm-saboteur", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if allow_sealing else 0))
    os.ftruncate(fd, nbytes)
    if content:
        os.pwrite(fd, content, 0)
    if nbytes and not sparse:
        os.posix_fallocate(fd, 0, nbytes)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def tensor(dtype="float32", shape=(16,), strides=(1,), offset=0, index=0, nbytes=64, grad=False, device="cpu"):
    return [dtype, list(shape), list(strides), offset, index, nbytes, grad, device]


def _q(quantization, dtype="quint8"):
    """A quantized tensor's fields: 16 one-byte elements, then ``quantization``."""
    return [*tensor(dtype, nbytes=16), quantization]


def _pipe():
    r, w = os.pipe()
    os.write(w, b"x" * 64)
    os.close(w)
    return r


def _readable_file():
    for path in ("/usr/lib/os-release", "/etc/os-release", __file__):
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
    raise OSError("no readable file")


def _socket():
    a, b = socket.socketpair()
    b.close()
    return a.detach()


def _read_only_reopen():
    fd = memfd(64)
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def _hole_hidden_by_pages_past_the_end(nbytes):
    """A memfd of ``nbytes`` with no page inside it but as many allocated past its end
    (fallocate with FALLOC_FL_KEEP_SIZE): its page count matches its size."""
    import ctypes

    fd = memfd(nbytes, 0, sparse=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fallocate(fd, 1, ctypes.c_long(nbytes), ctypes.c_long(nbytes)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALED)
    return fd


# attack name -> () -> (extension code, wire fields, descriptors to attach)
ATTACKS = {
    # segments whose pages the sender never paid for, or bigger than what they carry
    "sparse segment, 2 GiB": lambda: (EXT_TENSOR, tensor("uint8", shape=(2**31,), nbytes=2**31),
                                      [memfd(2**31, sparse=True)]),
    "sparse segment, a small view": lambda: (EXT_TENSOR, tensor(), [memfd(1 << 20, content=b"x" * 64, sparse=True)]),
    "array on a sparse segment": lambda: (EXT_NDARRAY, tensor("|u1", shape=(1 << 20,), nbytes=1 << 20),
                                          [memfd(1 << 20, sparse=True)]),
    "segment far bigger than its tensor": lambda: (EXT_TENSOR, tensor(), [memfd(1 << 20)]),
    # descriptors that are not a memfd sealed against shrinking
    "unsealed memfd": lambda: (EXT_TENSOR, tensor(), [memfd(64, 0, allow_sealing=False)]),
    "sealable memfd, no seals": lambda: (EXT_TENSOR, tensor(), [memfd(64, 0)]),
    "sealed against growing only": lambda: (EXT_TENSOR, tensor(), [memfd(64, fcntl.F_SEAL_GROW)]),
    "pipe": lambda: (EXT_TENSOR, tensor(), [_pipe()]),
    "read-only regular file": lambda: (EXT_TENSOR, tensor(nbytes=16, shape=(4,)), [_readable_file()]),
    "socket": lambda: (EXT_TENSOR, tensor(), [_socket()]),
    "/dev/zero": lambda: (EXT_TENSOR, tensor(), [os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)]),
    "array on a pipe": lambda: (EXT_NDARRAY, tensor("<f4"), [_pipe()]),
    # sizes and views that reach past the memory
    "nbytes beyond the file": lambda: (EXT_TENSOR, tensor(shape=(1024,), nbytes=4096), [memfd(64)]),
    "nbytes huge": lambda: (EXT_TENSOR, tensor(shape=(2**40,), nbytes=2**62), [memfd(64)]),
    "nbytes zero": lambda: (EXT_TENSOR, tensor(nbytes=0), [memfd(64)]),
    "offset past the end": lambda: (EXT_TENSOR, tensor(offset=1), [memfd(64)]),
    "strides past the end": lambda: (EXT_TENSOR, tensor(shape=(4, 4), strides=(5, 1)), [memfd(64)]),
    "shape past the end": lambda: (EXT_TENSOR, tensor(shape=(17,)), [memfd(64)]),
    "offset huge": lambda: (EXT_TENSOR, tensor(offset=2**62), [memfd(64)]),
    "overflowing shape": lambda: (EXT_TENSOR, tensor(shape=(2**62, 2**62), strides=(2**62, 1)), [memfd(64)]),
    "array past the end": lambda: (EXT_NDARRAY, tensor("<f8", shape=(9,)), [memfd(64)]),
    # malformed layouts
    "negative stride": lambda: (EXT_TENSOR, tensor(shape=(4,), strides=(-1,), offset=3), [memfd(64)]),
    "negative offset": lambda: (EXT_TENSOR, tensor(offset=-1), [memfd(64)]),
    "negative shape": lambda: (EXT_TENSOR, tensor(shape=(-1,)), [memfd(64)]),
    "rank mismatch": lambda: (EXT_TENSOR, tensor(shape=(4, 4), strides=(1,)), [memfd(64)]),
    "array negative stride": lambda: (EXT_NDARRAY, tensor("<f4", shape=(4,), strides=(-1,), offset=3), [memfd(64)]),
    "wrong field count": lambda: (EXT_TENSOR, tensor()[:7], [memfd(64)]),
    "fields not a list": lambda: (EXT_TENSOR, {"dtype": "float32"}, [memfd(64)]),
    # refused dtypes and flags
    "dtype object": lambda: (EXT_TENSOR, tensor("object"), [memfd(64)]),
    "dtype qint8": lambda: (EXT_TENSOR, tensor("qint8", nbytes=16), [memfd(64)]),
    "dtype torch attribute": lambda: (EXT_TENSOR, tensor("Tensor"), [memfd(64)]),
    "array dtype object": lambda: (EXT_NDARRAY, tensor("|O"), [memfd(64)]),
    "array dtype big-endian": lambda: (EXT_NDARRAY, tensor(">f4"), [memfd(64)]),
    "array dtype structured": lambda: (EXT_NDARRAY, tensor("f4,i4", shape=(8,)), [memfd(64)]),
    "array dtype unicode": lambda: (EXT_NDARRAY, tensor("<U4", shape=(4,)), [memfd(64)]),
    "requires_grad on integers": lambda: (EXT_TENSOR, tensor("int32", grad=True), [memfd(64)]),
    "device cuda:0": lambda: (EXT_TENSOR, tensor(device="cuda:0"), [memfd(64)]),
    "device meta": lambda: (EXT_TENSOR, tensor(device="meta"), [memfd(64)]),
    "array on cuda": lambda: (EXT_NDARRAY, tensor("<f4", device="cuda:0"), [memfd(64)]),
    # descriptor indices
    "fd_index out of range": lambda: (EXT_TENSOR, tensor(index=1), [memfd(64)]),
    "fd_index negative": lambda: (EXT_TENSOR, tensor(index=-2), [memfd(64)]),
    "fd_index with no fds": lambda: (EXT_TENSOR, tensor(index=0), []),
    "fd_index not an int": lambda: (EXT_TENSOR, tensor(index="0"), [memfd(64)]),
    "non-empty tensor without memory": lambda: (EXT_TENSOR, tensor(index=-1), [memfd(64)]),
    # quantization (a ninth field): parameters a real quantized tensor can't have
    "quantized scale zero": lambda: (EXT_TENSOR, _q(["per_tensor", 0.0, 0]), [memfd(64)]),
    "quantized scale nan": lambda: (EXT_TENSOR, _q(["per_tensor", float("nan"), 0]), [memfd(64)]),
    "quantized scale a string": lambda: (EXT_TENSOR, _q(["per_tensor", "0.1", 0]), [memfd(64)]),
    "quantized scale infinite in float32": lambda: (EXT_TENSOR, _q(["per_tensor", 1e300, 0]), [memfd(64)]),
    "quantized scale subnormal in float32": lambda: (EXT_TENSOR, _q(["per_tensor", 1e-40, 0]), [memfd(64)]),
    "quantized zero point out of range": lambda: (EXT_TENSOR, _q(["per_tensor", 0.1, 1000]), [memfd(64)]),
    "quantized zero point huge": lambda: (EXT_TENSOR, _q(["per_tensor", 0.1, 2**63]), [memfd(64)]),
    "quantized per channel, wrong count": lambda: (
        EXT_TENSOR, _q(["per_channel", 0, [0.1] * 3, [0] * 3]), [memfd(64)]),
    "quantized per channel, axis out of range": lambda: (
        EXT_TENSOR, _q(["per_channel", 1, [0.1] * 16, [0] * 16]), [memfd(64)]),
    "quantized per channel, one scale infinite in float32": lambda: (
        EXT_TENSOR, _q(["per_channel", 0, [0.1] * 15 + [1e39], [0] * 16]), [memfd(64)]),
    "quantized per channel, negative scale": lambda: (
        EXT_TENSOR, _q(["per_channel", 0, [-0.1] * 16, [0] * 16]), [memfd(64)]),
    "quantized, unknown scheme": lambda: (EXT_TENSOR, _q(["symmetric", 0.1, 0]), [memfd(64)]),
    "quantized, not a list": lambda: (EXT_TENSOR, _q({"scale": 0.1}), [memfd(64)]),
    "quantized float32": lambda: (EXT_TENSOR, [*tensor(), ["per_tensor", 0.1, 0]], [memfd(64)]),
    "quantized packed 4-bit": lambda: (EXT_TENSOR, _q(["per_tensor", 0.1, 0], "quint4x2"), [memfd(64)]),
    "quantized requiring grad": lambda: (
        EXT_TENSOR, [*tensor("quint8", nbytes=16, grad=True), ["per_tensor", 0.1, 0]], [memfd(64)]),
    "quantized on cuda": lambda: (
        EXT_TENSOR, [*tensor("quint8", nbytes=16, device="cuda:0"), ["per_tensor", 0.1, 0]], [memfd(64)]),
    "quantized array": lambda: (EXT_NDARRAY, [*tensor("|u1", nbytes=16), ["per_tensor", 0.1, 0]], [memfd(64)]),
}

# Not necessarily refused, but must be harmless: the host refuses or maps them safely.
ODD_BUT_HARMLESS = {
    "memfd sealed against writes": lambda: (EXT_TENSOR, tensor(), [memfd(64, SEALED | fcntl.F_SEAL_WRITE)]),
    "memfd sealed against future writes": lambda: (EXT_TENSOR, tensor(), [memfd(64, SEALED | F_SEAL_FUTURE_WRITE)]),
    "memfd reopened read-only": lambda: (EXT_TENSOR, tensor(), [_read_only_reopen()]),
    "64 fds, one used": lambda: (EXT_TENSOR, tensor(), [memfd(64) for _ in range(64)]),
    # its page count matches its size, so it passes; the host's reads allocate what the actor
    # also allocated, no more (a 2x bound, documented in docs/security.md)
    "hole hidden by pages past the end": lambda: (
        EXT_TENSOR, tensor("uint8", shape=(1 << 16,), nbytes=1 << 16), [_hole_hidden_by_pages_past_the_end(1 << 16)]),
    "empty tensor with a huge shape and offset": lambda: (
        EXT_TENSOR, tensor(shape=(0, 2**62), strides=(1, 1), offset=2**62, index=-1, nbytes=0), []),
    "empty quantized tensor with a huge offset": lambda: (
        EXT_TENSOR, [*tensor("quint8", shape=(0,), offset=2**62, index=-1, nbytes=0), ["per_tensor", 0.1, 0]], []),
    "empty array with a huge shape": lambda: (
        EXT_NDARRAY, tensor("<f8", shape=(0, 2**62), strides=(1, 1), offset=2**62, index=-1, nbytes=0), []),
}
TWO_SIZES = "one fd, two tensors claiming different sizes"
NOT_ARGS = "a genuine tensor as the whole call payload, not [args, kwargs]"


def _reply(payload, fds):
    body = pack([REPLY, current_call.get(), OK, payload, None, True, len(fds)])
    if fds:
        send_with_fds(frame(body, len(fds)), fds)
    else:
        send_body(body)


@actorbox.actor
class ShmSaboteur:
    """Answers its own calls with forged shared-memory tensors."""

    def __init__(self):
        self.kept_fd = None
        self.truncate_outcome = None
        self.handles = None

    def ping(self):
        return "pong"

    def fd_count(self):
        return len(os.listdir("/proc/self/fd"))

    def take(self, value):
        return value

    def forged_tensor_reply(self, attack):
        """Answer this call with the forged tensor ``attack`` (its descriptors attached), then return normally."""
        if attack == TWO_SIZES:
            code, fds = EXT_TENSOR, [memfd(64)]
            payload = pack([Ext(code, pack(tensor(shape=(4,), nbytes=16))), Ext(code, pack(tensor(nbytes=64)))])
        else:
            code, fields, fds = {**ATTACKS, **ODD_BUT_HARMLESS}[attack]()
            payload = pack(Ext(code, pack(fields)))
        try:
            _reply(payload, fds)
        finally:
            for fd in fds:
                os.close(fd)
        return "the genuine reply (must be ignored: the call already has its answer)"

    def empty_reply_with_fds(self, n):
        """Answer this call OK with no payload but ``n`` memfds attached (no value owns them)."""
        fds = [memfd(4096) for _ in range(n)]
        try:
            _reply(b"", fds)
        finally:
            for fd in fds:
                os.close(fd)
        return "the genuine reply (ignored)"

    async def forged_call(self, name, attack):
        """Call the host-resident ``name``'s ``ping`` with the forged tensor ``attack`` as its
        argument; "not [args, kwargs]": a genuine tensor as the whole payload. What the call
        raised, as text."""
        if attack == NOT_ARGS:
            fields, fds = tensor(), [memfd(64)]
            payload = pack(Ext(EXT_TENSOR, pack(fields)))
        else:
            code, fields, fds = ATTACKS[attack]()
            payload = pack([[Ext(code, pack(fields))], {}])
        target = actorbox.info(actorbox.get_actor(name)).actor_id
        try:
            return f"returned {await raw_call(target, 'ping', payload, fds):.60}"
        except Exception as exc:
            return type(exc).__name__

    def sealed_then_truncate(self, nbytes):
        """Answer with a valid sealed uint8 segment (byte i = i % 251), then try to shrink and punch it."""
        fd = memfd(nbytes, content=bytes(i % 251 for i in range(nbytes)))
        try:
            _reply(pack(Ext(EXT_TENSOR, pack(tensor("uint8", (nbytes,), (1,), 0, 0, nbytes)))), [fd])
        except BaseException:
            os.close(fd)
            raise
        self.kept_fd = fd
        outcome = {}
        for what, attempt in (("truncate", lambda: os.ftruncate(fd, 0)),
                              ("truncate to one page", lambda: os.ftruncate(fd, 4096)),
                              ("add a write seal", lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE))):
            try:
                attempt()
                outcome[what] = "succeeded"
            except OSError as exc:
                outcome[what] = exc.errno
        outcome["size"] = os.fstat(fd).st_size
        self.truncate_outcome = outcome
        return "the genuine reply (must be ignored)"

    def last_truncate(self):
        return self.truncate_outcome

    def scribble(self, value):
        """Write ``value`` into every byte of the segment it sent (shared memory: the host sees it)."""
        os.pwrite(self.kept_fd, bytes([value]) * os.fstat(self.kept_fd).st_size, 0)
        return True

    def keep_a_way_back(self, t):
        """Keep a way to the segment ``t`` arrived in that holds no open file description a
        sender could count: an O_PATH handle, and its first page spliced into a pipe.
        The tensor itself (descriptor and mapping) is let go when this call returns."""
        from actorbox._context import process_caller

        fd, _ = process_caller.get().codec.segments.lookup(t.untyped_storage().data_ptr())
        path = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        r, w = os.pipe()
        spliced = os.splice(fd, w, 4096, offset_src=0)
        self.handles = (path, r, w)
        return spliced

    def look_back(self):
        """What the kept ways show now: the file reopened read-write, and the spliced page."""
        path, r, _ = self.handles
        fd = os.open(f"/proc/self/fd/{path}", os.O_RDWR | os.O_CLOEXEC)
        try:
            through_file = os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        through_pipe = os.read(r, 4096)
        for h in self.handles:
            os.close(h)
        self.handles = None
        return through_file, through_pipe
