"""EnCodecMAE as a tool: its features, clip embeddings and the semantic tokenizer (k-means)."""
