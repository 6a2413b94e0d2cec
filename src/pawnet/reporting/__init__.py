"""What a model's answers are worth: `evaluate` computes a `Report` (`report`, `figures`),
written as text (`text`), a page (`html`) and pictures (`plots`); `gradcam` shows where a
model looked."""
