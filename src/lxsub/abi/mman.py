"""<sys/mman.h>, <sys/personality.h>: what mapping a program takes."""

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
ADDR_NO_RANDOMIZE = 0x0040000
