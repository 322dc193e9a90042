"""Process-level plumbing every stage above may use: the collectives with their gradient rules
(`dist`: gather with and without gradient, the rank vote, buffer broadcast), the precision and
device decisions (`precision`: bf16 where the hardware has it, channels_last, fp32 islands),
checkpoints that round-trip weights, optimizer and RNG state through `weights_only` loading
(`checkpoint`), and local or object-store paths (`storage`). It imports only `config`."""
