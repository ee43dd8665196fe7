// Compiled by CTest against the ops layer's include root: it must succeed (common/ lies below ops).
#include "common/error.h"
int main() { return 0; }
