// Caps how many tests Swift Testing runs at once in the test bundle.
//
// Swift Testing starts every test of the bundle at once. On a machine of two cores, a thousand tests share two
// threads of the cooperative pool, and the tests that wait on real time (elections, heartbeats, TCP round trips,
// 60-second bounds on failure) get their turn so rarely that correct tests give up. The library reads its cap
// from the environment when the bundle's main function starts; this constructor runs before main and sets a cap
// of six tests per core unless the environment already sets one (overwrite = 0), so `swift test` needs no
// option and a developer can still choose any width.

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "CQuorumTestSupport.h"

static int chosen_width = 0;

__attribute__((constructor)) static void cquorum_cap_parallelization(void) {
  const char *name = "SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH";
  if (getenv(name) != NULL) return;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1) cores = 1;
  int width = (int)(cores * 6);
  char text[32];
  snprintf(text, sizeof text, "%d", width);
  if (setenv(name, text, 0) == 0) chosen_width = width;
}

int cquorum_test_parallelization_width(void) { return chosen_width; }
