"""The visual stage: every photo's released vector consolidated, reduced by PCA and clustered in
one pass, as explicit stages.

- `codec`: the store's encodings (bfloat16, float16, float32): encode, decode, round, check.
- `store`: the consolidated vector store (`VectorStore`) and its writer (`StoreWriter`).
- `sources`: the released zips or folders of every split as one sequence of checked chunks (`Released`).
- `sampling`: the rows the PCA and the KMeans are fitted on (`FitSample`) and reading them.
- `projection`: projecting chunks on the PCA axes, assigning clusters, writing the reduced table.
- `flow`: the bounded queue and the worker thread that join the stages.
- `stage`: `VisualStage`, the pass that joins them.
"""
