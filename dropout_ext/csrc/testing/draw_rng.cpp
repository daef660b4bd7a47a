// ../cpu/draw_rng.cpp for the testing module's namespace (testing.h).
#include "testing.h"

#include "../cpu/draw_rng.cpp"
