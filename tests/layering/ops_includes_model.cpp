// Compiled by CTest against the ops layer's include root: it must fail, because ops may not include model/.
#include "model/llama.h"
