#ifndef CQUORUM_TEST_SUPPORT_H
#define CQUORUM_TEST_SUPPORT_H

/// The most tests the test bundle runs at once, as set for this process by the constructor in
/// parallel_width.c (0 when the environment already chose a width).
int cquorum_test_parallelization_width(void);

#endif
