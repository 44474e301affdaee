// The module is header-only; this file gives SwiftPM a C source to compile.
#include "CQuorumSystem.h"
