"""Search over one model set's catalogue: query understanding, BM25, the item-space retriever, fusion."""
