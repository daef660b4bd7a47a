// ../autograd.cpp for the testing module's namespace (testing.h).
#include "testing.h"

#include "../autograd.cpp"
