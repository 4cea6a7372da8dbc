"""Math shared by several editors: key/value extraction, key statistics, the tensor cache, corpora."""
