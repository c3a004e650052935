"""pyparsing grammars for PKCS#11 trace dialects (one module per dialect family)."""
