# Cross-compiling quiver for 64-bit Arm (aarch64) on a Debian x86-64 host, tests run under
# qemu-user. Used by tests/arm64/run.sh; needs gcc-aarch64-linux-gnu, qemu-user and the arm64
# -dev packages of the dependencies (dpkg multiarch).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
# Programs run on the multiarch C library (libc6:arm64, found through /lib/ld-linux-aarch64.so.1),
# not with -L /usr/aarch64-linux-gnu: under Debian 12's qemu 7.2 that cross copy hung in the first
# pthread_create (2026-12-02).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
