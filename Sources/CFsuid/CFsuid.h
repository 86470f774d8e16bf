// setfsuid(2)/setfsgid(2) for Swift (glibc declares them in <sys/fsuid.h>, which the Glibc module does not import).
#pragma once
#include <sys/fsuid.h>
