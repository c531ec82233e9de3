"""Result schema, history store, compare, render. Stands alone: imports no suite and no vLLM."""
