# Read by CTest (not CMake) before it runs anything: registers every cmocka
# case of a test executable as its own CTest test, so that a case which
# skipped (exit 77, see tu_run_tests in tests/support/test_util.c) shows as
# skipped and the rest as passed. The case list comes from the executable
# itself (WMAT_TEST_LIST=1), so a new case needs no CMake edit.
#
# wmat_discover(PREFIX EXE ENV TIMEOUT SLOW_RE PEER_RE FUZZ_RE)
#   PREFIX   the tests are named PREFIX.CASE (one executable may be
#            registered under several prefixes with different ENV)
#   ENV      extra environment, a ;-list of NAME=VALUE
#   SLOW_RE, PEER_RE: regular expressions over PREFIX.CASE for the labels
#            slow and peer; FUZZ_RE likewise for fuzz; all others are fast.
function(wmat_discover prefix exe env timeout slow_re peer_re fuzz_re)
  if(NOT EXISTS "${exe}")
    # Not built (a build of selected targets): say so if it is selected.
    add_test("${prefix}_NOT_BUILT" "${exe}")
    return()
  endif()
  # (CTest defines no CMAKE_COMMAND for `cmake -E env`: set it here and
  # take it away before any test inherits it.)
  set(ENV{WMAT_TEST_LIST} 1)
  execute_process(COMMAND "${exe}" OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_VARIABLE err TIMEOUT 60)
  unset(ENV{WMAT_TEST_LIST})
  if(NOT rc EQUAL 0)
    add_test("${prefix}_LIST_FAILED" "${exe}")
    message(WARNING "${exe}: listing its cases failed (${rc}): ${err}")
    return()
  endif()
  string(REGEX REPLACE "\n$" "" out "${out}")
  string(REPLACE "\n" ";" cases "${out}")
  foreach(case IN LISTS cases)
    if(case STREQUAL "")
      continue()
    endif()
    set(name "${prefix}.${case}")
    set(labels "")
    if(name MATCHES "${fuzz_re}")
      list(APPEND labels fuzz)
    endif()
    if(name MATCHES "${peer_re}")
      list(APPEND labels peer)
    endif()
    if(name MATCHES "${slow_re}")
      list(APPEND labels slow)
    endif()
    if(labels STREQUAL "")
      set(labels fast)
    endif()
    add_test("${name}" "${exe}")
    set_tests_properties("${name}" PROPERTIES
      ENVIRONMENT "CMOCKA_MESSAGE_OUTPUT=stdout;WMAT_TEST_CASE=${case};${env}"
      SKIP_RETURN_CODE 77 TIMEOUT ${timeout} LABELS "${labels}")
  endforeach()
endfunction()
