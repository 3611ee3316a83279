"""Clinical review: worklists, reading, decisions on AI findings, signed reports."""
