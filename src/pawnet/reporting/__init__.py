"""What a model's answers are worth: `evaluate` computes a `Report` (`report`, `figures`),
written as text (`text`), a page (`html`), pictures (`plots`) and a model card (`card`);
`intervals` says how sure a figure is, `compare` measures two models on the same photos
for the release gate, and `heatmap` and `explain` show where a model looked."""
