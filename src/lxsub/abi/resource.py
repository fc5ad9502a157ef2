"""<sys/resource.h>: the resource numbers of getrlimit(2) that lxsub looks at."""

RLIMIT_NOFILE = 7
RLIM_NLIMITS = 16
