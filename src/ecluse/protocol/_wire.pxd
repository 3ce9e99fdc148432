# The wire's big-endian Int32, read in C: shared by the compiled accelerators
# (protocol/_framing.pyx, frontend/_expressplan.pyx); a .pxd, so no module of its own.

cdef inline unsigned long be32(const unsigned char *p) noexcept nogil:
    return ((<unsigned long>p[0] << 24) | (<unsigned long>p[1] << 16)
            | (<unsigned long>p[2] << 8) | p[3])
