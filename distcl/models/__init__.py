"""The methods and what they are built from: encoders (encoders.py; text.py, the byte-token
Transformer for text), projection and prediction
heads (heads.py), and SimCLR/SupCon, the supervised baseline, MoCo v2/v3, BYOL, SwAV and Barlow
Twins, each a `Method` (base.py: `forward(views, labels)` returns the loss, plus the two step
calls the training loop makes on every method). methods.py maps `method.name` to a builder.
It may import `config`, `runtime` and `losses`. Nothing is re-exported here: import the module
that owns a name.
"""
