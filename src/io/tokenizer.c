/* stub: replaced by the real tokenizer */
#include "../core/internal.h"
