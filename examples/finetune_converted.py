"""Convert, then finetune: a converted base model becomes a converted classifier with the standard
transformers Trainer, and its saved folder loads back as the FFF model.

    python examples/finetune_converted.py out/minilm-fff ../shared/glue/SST-2/train.tsv out/minilm-fff-sst2 [--routing]

The FFF layers' leaves learn through the hard forward the kernels run; with --routing the routing
learns too (fffconvert.RoutingTrainer: soft routing with the hardening loss, then hard).
"""
import csv
import sys

import torch
import transformers

import fffconvert  # registers the converted model types with the Auto classes


def main(converted, train_tsv, output, routing=False, rows=2000, steps=200):
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(converted, num_labels=2)
    with open(train_tsv, encoding="utf-8-sig", newline="") as f:
        data = [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:rows]
    dataset = [{**{k: v[0] for k, v in tokenizer(text, truncation=True, max_length=128, return_tensors="pt").items()},
                "labels": torch.tensor(label)} for text, label in data]
    args = transformers.TrainingArguments(output + "-run", max_steps=steps, per_device_train_batch_size=32,
                                          learning_rate=5e-5, report_to=[], save_strategy="no", logging_steps=50)
    trainer_cls = fffconvert.RoutingTrainer if routing else transformers.Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=transformers.DataCollatorWithPadding(tokenizer))
    trainer.train()
    trainer.save_model(output)  # model.safetensors + config (an FFF model type) + tokenizer
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(output)
    print(f"saved {output}: {type(reloaded).__name__}, {reloaded.config.fff['rows_per_token']:.1f} FFN neurons per token")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--routing"]
    main(*args, routing="--routing" in sys.argv)
