"""<elf.h> (ELF64) and x86-64's binfmt_elf layout: what loading a program reads."""

PT_LOAD = 1
PT_PHDR = 6
PF_X, PF_W, PF_R = 1, 2, 4
ELF_ET_DYN_BASE = 0x555555554000     # arch/x86/include/asm/elf.h: 2/3 of a 47-bit space, paged
MMAP_RND_BITS = 28                   # /proc/sys/vm/mmap_rnd_bits default (x86-64)
