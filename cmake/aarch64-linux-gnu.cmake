# Cross build for arm64 (aarch64) with Debian's cross toolchain (g++-aarch64-linux-gnu) against
# Debian's multiarch arm64 packages (dpkg --add-architecture arm64; libfmt-dev:arm64, ...), which
# install beside the host's, in /usr/lib/aarch64-linux-gnu and /usr/include/aarch64-linux-gnu: the
# sysroot is / and only the architecture's directories differ. The programs run under qemu-user
# (ctest and gtest_discover_tests go through CMAKE_CROSSCOMPILING_EMULATOR).
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DMAMBA2_CUDA=OFF
# scripts/test-arm64.sh does this and runs the tests; scripts/install-deps.sh installs what it needs.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# find_library, find_path and find_package look in <prefix>/lib/aarch64-linux-gnu and
# <prefix>/include/aarch64-linux-gnu, never in the host's x86_64-linux-gnu directories.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# pkg-config (PCRE2, utf8proc, cpp-httplib): the arm64 .pc files only.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
# The multiarch packages bring libc6:arm64, whose loader (/lib/ld-linux-aarch64.so.1) matches the
# libc.so.6 it then loads from /lib/aarch64-linux-gnu: so the prefix is /. (-L /usr/aarch64-linux-gnu
# would start the cross toolchain's own loader, a different glibc build, which then finds the
# multiarch libc through the host's ld.so.cache.)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /)
