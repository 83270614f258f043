"""Structured outputs: grammars (JSON schema, regex, choice, EBNF) compiled with xgrammar and enforced per token.

spec.py says what a request asks for, compiler.py turns it into a grammar (bounded, cached), constraint.py follows
one sequence (free thought, then the grammar from `<answer>` on), batch.py fills a step's masks together, and
mask.py applies the token masks in the sampler.
"""
