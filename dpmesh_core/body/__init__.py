"""Body models behind one protocol, and joint sets with mappings between them."""
