#!/bin/sh
echo "app on runtime $(cat /home/app/runtime-version)"
