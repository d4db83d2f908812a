# version.cmake - writes qv_version.h (QV_VERSION, QV_GIT_COMMIT) at every build, touching the
# file only when its contents change, so `quiver --version` and /metrics name the commit that
# was built, not the one CMake was configured at. The environment's QV_GIT_COMMIT wins (a
# Docker build passes it: its context has no .git); outside a git checkout the commit is
# "unknown". Run by the qv_version target: cmake -DSRC=... -DOUT=... -DVERSION=... -P version.cmake
if(DEFINED ENV{QV_GIT_COMMIT} AND NOT "$ENV{QV_GIT_COMMIT}" STREQUAL "")
  set(commit "$ENV{QV_GIT_COMMIT}")
else()
  execute_process(COMMAND git -C "${SRC}" rev-parse --short=12 HEAD
                  OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE rc ERROR_QUIET)
  if(NOT rc EQUAL 0 OR commit STREQUAL "")
    set(commit "unknown")
  else()
    execute_process(COMMAND git -C "${SRC}" diff --quiet HEAD -- RESULT_VARIABLE dirty ERROR_QUIET)
    if(NOT dirty EQUAL 0)
      set(commit "${commit}-dirty")
    endif()
  endif()
endif()
set(text "#define QV_VERSION \"${VERSION}\"\n#define QV_GIT_COMMIT \"${commit}\"\n")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
